-- Issue 23: each publish counts its owner's unfinished tickets (the per-user quota); this
-- index keeps that count to the few unfinished rows, however many have ended.
CREATE INDEX publish_tickets_unfinished_user ON publish_tickets (user_id)
    WHERE state IN ('queued', 'running');
