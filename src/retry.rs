//! Waiting between tries, the one way: a `Backoff` policy (exponential from a first delay up
//! to a cap, backon's policy, optionally with full jitter) yields the delays of a "wait then
//! try again" loop, or the delay before the n-th try when the count is stored elsewhere.
//! `retry` runs an operation under it with a maximum number of attempts and a total
//! deadline; `Retry-After` is honoured up to the cap. `retry_with_state` does the same for
//! attempts that hand the next one what they learnt.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RetrySettings;

/// Exponential backoff: `first`, doubling at each try, never above `cap`; with full jitter
/// each delay is uniformly random in [0, that delay].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    full_jitter: bool,
}

impl Backoff {
    pub const fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            full_jitter: false,
        }
    }

    pub const fn with_full_jitter(self) -> Backoff {
        Backoff {
            full_jitter: true,
            ..self
        }
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The delays of a loop that waits then tries again, without end (`take` bounds them).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let full_jitter = self.full_jitter;
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .map(move |d| if full_jitter { jittered(d) } else { d })
    }

    /// The delay after `tries` failed tries (0: the first delay), for a count kept elsewhere
    /// (the reconciler keeps it in the database).
    pub fn delay_for_attempt(&self, tries: u32) -> Duration {
        // The cap is reached by then for any sane first delay; more steps change nothing.
        let steps = tries.min(64) as usize;
        self.delays().nth(steps).unwrap_or(self.cap)
    }
}

/// Full jitter: uniform in [0, `delay`].
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random::<f64>())
}

/// What a failure says about retrying.
pub trait Retryable {
    fn is_transient(&self) -> bool;
    fn retry_after(&self) -> Option<Duration>;
    /// The error to end with when the wait is cancelled.
    fn cancelled() -> Self;
}

/// Told before each wait, so the user can see it.
pub struct RetryNotice<'a, E> {
    /// The attempt that comes next (2 for the first retry).
    pub next_attempt: u32,
    pub max_attempts: u32,
    pub delay: Duration,
    pub error: &'a E,
}

impl<E: std::fmt::Display> RetryNotice<'_, E> {
    /// "retrying in 8 s, attempt 3 of 6: Glance answered 503"
    pub fn message(&self, reason: &str) -> String {
        format!(
            "retrying in {} s, attempt {} of {}: {reason}",
            self.delay.as_secs_f64().ceil() as u64,
            self.next_attempt,
            self.max_attempts
        )
    }
}

impl RetrySettings {
    /// The backoff of transient failures: full jitter from `min_delay` up to `max_delay`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.min_delay, self.max_delay).with_full_jitter()
    }
}

/// Runs `op` (given the attempt number, from 1) until it succeeds, fails permanently, runs
/// out of attempts or of time, or `cancel` fires during a wait. `notify` runs before each
/// wait; an error from it ends the retries.
pub async fn retry<T, E, Op, OpFut, Notify, NotifyFut>(
    settings: &RetrySettings,
    cancel: &CancellationToken,
    mut op: Op,
    notify: Notify,
) -> Result<T, E>
where
    E: Retryable,
    Op: FnMut(u32) -> OpFut,
    OpFut: Future<Output = Result<T, E>>,
    Notify: FnMut(RetryNotice<'_, E>) -> NotifyFut,
    NotifyFut: Future<Output = Result<(), E>>,
{
    let op = |attempt, ()| {
        let tried = op(attempt);
        async move { (tried.await, ()) }
    };
    retry_with_state(settings, cancel, (), op, notify).await
}

/// `retry` for attempts that hand the next one a state: the first attempt gets `initial`,
/// each later one what the attempt before returned beside its result.
pub async fn retry_with_state<S, T, E, Op, OpFut, Notify, NotifyFut>(
    settings: &RetrySettings,
    cancel: &CancellationToken,
    initial: S,
    mut op: Op,
    mut notify: Notify,
) -> Result<T, E>
where
    E: Retryable,
    Op: FnMut(u32, S) -> OpFut,
    OpFut: Future<Output = (Result<T, E>, S)>,
    Notify: FnMut(RetryNotice<'_, E>) -> NotifyFut,
    NotifyFut: Future<Output = Result<(), E>>,
{
    let started = Instant::now();
    let max_attempts = settings.max_attempts.max(1);
    let backoff = settings.backoff();
    let mut delays = backoff.delays().take(max_attempts as usize - 1);
    let mut attempt = 1;
    let mut state = initial;
    loop {
        let error = match op(attempt, state).await {
            (Ok(value), _) => return Ok(value),
            (Err(e), next) => {
                state = next;
                e
            }
        };
        if !error.is_transient() {
            return Err(error);
        }
        let Some(jittered) = delays.next() else {
            return Err(error);
        };
        // Never sooner than the cloud asked, but a cloud asking for hours is not obeyed.
        let delay = error
            .retry_after()
            .map_or(jittered, |asked| jittered.max(asked.min(backoff.cap())));
        if started.elapsed() + delay > settings.deadline {
            return Err(error);
        }
        attempt += 1;
        notify(RetryNotice {
            next_attempt: attempt,
            max_attempts,
            delay,
            error: &error,
        })
        .await?;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(E::cancelled()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Fault {
        Transient(Option<Duration>),
        Permanent,
        Cancelled,
    }

    impl std::fmt::Display for Fault {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Retryable for Fault {
        fn is_transient(&self) -> bool {
            matches!(self, Fault::Transient(_))
        }
        fn retry_after(&self) -> Option<Duration> {
            match self {
                Fault::Transient(ra) => *ra,
                _ => None,
            }
        }
        fn cancelled() -> Self {
            Fault::Cancelled
        }
    }

    fn settings(max_attempts: u32, deadline_secs: u64) -> RetrySettings {
        RetrySettings {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_attempts,
            deadline: Duration::from_secs(deadline_secs),
        }
    }

    /// Runs a scripted operation; returns the result, the attempts made, the virtual time
    /// spent, and the notices' delays.
    async fn run_script(
        settings: RetrySettings,
        script: Vec<Result<u32, Fault>>,
    ) -> (Result<u32, Fault>, u32, Duration, Vec<(u32, Duration)>) {
        let script = RefCell::new(script.into_iter());
        let attempts = RefCell::new(0);
        let notices = RefCell::new(vec![]);
        let started = Instant::now();
        let result = retry(
            &settings,
            &CancellationToken::new(),
            |n| {
                *attempts.borrow_mut() = n;
                let next = script.borrow_mut().next().expect("script long enough");
                async move { next }
            },
            |notice| {
                notices
                    .borrow_mut()
                    .push((notice.next_attempt, notice.delay));
                async { Ok(()) }
            },
        )
        .await;
        let n = *attempts.borrow();
        (result, n, started.elapsed(), notices.into_inner())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_faults_with_capped_jittered_backoff() {
        let script = vec![
            Err(Fault::Transient(None)),
            Err(Fault::Transient(None)),
            Err(Fault::Transient(None)),
            Err(Fault::Transient(None)),
            Err(Fault::Transient(None)),
            Ok(7),
        ];
        let (result, attempts, elapsed, notices) = run_script(settings(6, 3600), script).await;
        assert_eq!(result, Ok(7));
        assert_eq!(attempts, 6);
        // Delays 1, 2, 4, 8, 8 s before jitter (capped at 8): each wait is within [0, base].
        let bases = [1, 2, 4, 8, 8];
        assert_eq!(notices.len(), 5);
        for ((next, delay), base) in notices.iter().zip(bases) {
            assert!(
                *delay <= Duration::from_secs(base),
                "attempt {next}: {delay:?} > {base} s"
            );
        }
        assert_eq!(
            notices.iter().map(|n| n.0).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        let slept: Duration = notices.iter().map(|n| n.1).sum();
        assert!(
            elapsed >= slept && elapsed < slept + Duration::from_millis(50),
            "{elapsed:?} vs {slept:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_faults_are_not_retried() {
        let (result, attempts, elapsed, notices) =
            run_script(settings(6, 3600), vec![Err(Fault::Permanent)]).await;
        assert_eq!(result, Err(Fault::Permanent));
        assert_eq!(attempts, 1);
        assert!(notices.is_empty());
        assert_eq!(elapsed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let script = (0..3).map(|_| Err(Fault::Transient(None))).collect();
        let (result, attempts, _, notices) = run_script(settings(3, 3600), script).await;
        assert_eq!(result, Err(Fault::Transient(None)));
        assert_eq!(attempts, 3);
        assert_eq!(notices.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        // 7 s: above the first delay (1 s), under the cap (8 s).
        let script = vec![Err(Fault::Transient(Some(Duration::from_secs(7)))), Ok(1)];
        let (result, _, elapsed, notices) = run_script(settings(6, 3600), script).await;
        assert_eq!(result, Ok(1));
        assert_eq!(
            notices[0].1,
            Duration::from_secs(7),
            "waits what Retry-After asks"
        );
        assert!(elapsed >= Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_capped_by_the_max_delay() {
        let script = vec![
            Err(Fault::Transient(Some(Duration::from_secs(999_999)))),
            Ok(1),
        ];
        let (result, _, elapsed, notices) = run_script(settings(6, 3600), script).await;
        assert_eq!(result, Ok(1));
        assert_eq!(notices[0].1, Duration::from_secs(8), "capped at max_delay");
        assert!(elapsed < Duration::from_secs(9), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_deadline() {
        // A (capped) Retry-After beyond the deadline ends it at once.
        let script = vec![Err(Fault::Transient(Some(Duration::from_secs(120)))), Ok(1)];
        let (result, attempts, elapsed, _) = run_script(settings(6, 5), script).await;
        assert_eq!(
            result,
            Err(Fault::Transient(Some(Duration::from_secs(120))))
        );
        assert_eq!(attempts, 1);
        assert_eq!(elapsed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_during_the_wait_ends_it() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            trigger.cancel();
        });
        let s = RetrySettings {
            min_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
            max_attempts: 5,
            deadline: Duration::from_secs(3600),
        };
        let started = Instant::now();
        let result: Result<(), Fault> = retry(
            &s,
            &cancel,
            |_| async { Err(Fault::Transient(Some(Duration::from_secs(60)))) },
            |_| async { Ok(()) },
        )
        .await;
        assert_eq!(result, Err(Fault::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_gets_the_state_the_one_before_returned() {
        let mut seen = vec![];
        let result: Result<u32, Fault> = retry_with_state(
            &settings(6, 3600),
            &CancellationToken::new(),
            10,
            |attempt, state: u32| {
                seen.push((attempt, state));
                async move {
                    let result = if attempt < 3 {
                        Err(Fault::Transient(None))
                    } else {
                        Ok(state)
                    };
                    (result, state + attempt)
                }
            },
            |_| async { Ok(()) },
        )
        .await;
        assert_eq!(seen, vec![(1, 10), (2, 11), (3, 13)]);
        assert_eq!(result, Ok(13));
    }

    #[test]
    fn delays_double_from_the_first_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let ms: Vec<u128> = backoff.delays().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    }

    #[test]
    fn the_delay_for_an_attempt_count_follows_the_same_policy() {
        // The reconciler's cleanups: 5 s doubling, at most an hour.
        let backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(3600));
        let secs = |n| backoff.delay_for_attempt(n).as_secs();
        assert_eq!((secs(0), secs(1), secs(2), secs(9)), (5, 10, 20, 2560));
        assert_eq!((secs(10), secs(1000), secs(u32::MAX)), (3600, 3600, 3600));
    }

    #[test]
    fn full_jitter_stays_within_each_delay() {
        let backoff =
            Backoff::new(Duration::from_secs(1), Duration::from_secs(4)).with_full_jitter();
        let plain = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        for (jittered, base) in backoff.delays().zip(plain.delays()).take(50) {
            assert!(jittered <= base, "{jittered:?} > {base:?}");
        }
    }

    #[test]
    fn the_message_names_delay_attempt_and_cause() {
        let e = Fault::Permanent;
        let n = RetryNotice {
            next_attempt: 3,
            max_attempts: 6,
            delay: Duration::from_millis(7200),
            error: &e,
        };
        assert_eq!(
            n.message("Glance answered 503"),
            "retrying in 8 s, attempt 3 of 6: Glance answered 503"
        );
    }
}
