//! Retrying transient failures: exponential backoff (backon's policy) with full jitter, a cap,
//! a maximum number of attempts and a total deadline; `Retry-After` is honoured up to the cap.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RetrySettings;

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

/// Full jitter: uniform in [0, `delay`], but never sooner than the cloud asked, up to `cap`
/// (a cloud asking for hours is not obeyed).
fn full_jitter(delay: Duration, retry_after: Option<Duration>, cap: Duration) -> Duration {
    let jittered = delay.mul_f64(rand::random::<f64>());
    retry_after.map_or(jittered, |ra| jittered.max(ra.min(cap)))
}

/// Runs `op` (given the attempt number, from 1) until it succeeds, fails permanently, runs
/// out of attempts or of time, or `cancel` fires during a wait. `notify` runs before each
/// wait; an error from it ends the retries.
pub async fn retry<T, E, Op, OpFut, Notify, NotifyFut>(
    settings: &RetrySettings,
    cancel: &CancellationToken,
    mut op: Op,
    mut notify: Notify,
) -> Result<T, E>
where
    E: Retryable,
    Op: FnMut(u32) -> OpFut,
    OpFut: Future<Output = Result<T, E>>,
    Notify: FnMut(RetryNotice<'_, E>) -> NotifyFut,
    NotifyFut: Future<Output = Result<(), E>>,
{
    let started = Instant::now();
    let deadline = Duration::from_secs(settings.deadline_secs);
    let max_attempts = settings.max_attempts.max(1);
    let max_delay = Duration::from_millis(settings.max_delay_ms);
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(settings.min_delay_ms))
        .with_max_delay(max_delay)
        .with_factor(2.0)
        .with_max_times(max_attempts as usize - 1)
        .build();
    let mut attempt = 1;
    loop {
        let error = match op(attempt).await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if !error.is_transient() {
            return Err(error);
        }
        let Some(base) = delays.next() else {
            return Err(error);
        };
        let delay = full_jitter(base, error.retry_after(), max_delay);
        if started.elapsed() + delay > deadline {
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
            min_delay_ms: 1000,
            max_delay_ms: 8000,
            max_attempts,
            deadline_secs,
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
            min_delay_ms: 60_000,
            max_delay_ms: 60_000,
            max_attempts: 5,
            deadline_secs: 3600,
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
