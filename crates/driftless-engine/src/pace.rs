//! Pacing of repair writes: a per-stage rate limit (governor's GCRA) whose rate adapts,
//! additive increase and multiplicative decrease (AIMD), to how the target copes.
//!
//! - [`Pacer::acquire`] waits until one more write is allowed. Time spent waiting is summed
//!   in [`Pacer::held_back`] (it feeds `driftless_backpressure_seconds_total`).
//! - After each write the repairer reports [`Pacer::record_success`] with the write's
//!   latency, or [`Pacer::record_error`]. An error, or a latency above the configured target,
//!   is congestion: the rate is multiplied by `decrease` (at most once per second, so one
//!   burst of failures halves the rate once, not ten times), never below `min_rate`. Each
//!   second without congestion adds `increase_per_sec` back, up to the configured rate.
//!
//! Time comes from tokio's clock, so a test on a paused runtime (`start_paused`) drives the
//! limiter in virtual time: it checks rates exactly, and instantly.
//!
//! A rate change rebuilds the limiter, which then starts with a full burst: at most one
//! extra burst per change, and changes are at most one per second.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Bad pacing settings, named by field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PaceError {
    #[error("{field} must be a positive, finite number, got {value}")]
    NotPositive { field: &'static str, value: f64 },
    #[error("min_rate ({min_rate}) must not exceed rate ({rate})")]
    MinAboveRate { min_rate: f64, rate: f64 },
    #[error("decrease must be in (0, 1), got {0}")]
    Decrease(f64),
}

/// How a stage's writes are paced.
#[derive(Debug, Clone, PartialEq)]
pub struct PaceConfig {
    /// Writes per second when the target is healthy; the ceiling of recovery.
    pub rate: f64,
    /// Writes allowed at once after an idle spell.
    pub burst: NonZeroU32,
    /// The floor under which congestion never pushes the rate.
    pub min_rate: f64,
    /// A write slower than this counts as congestion; `None` reacts to errors only.
    pub latency_target: Option<Duration>,
    /// Factor applied to the rate on congestion, in (0, 1).
    pub decrease: f64,
    /// Writes per second added back per second without congestion.
    pub increase_per_sec: f64,
}

impl PaceConfig {
    /// `rate` per second with `burst`, and the defaults for the rest: floor at 5% of the
    /// rate (at least 0.1/s), halve on congestion, recover 10% of the rate per second
    /// (from the floor to full speed in about 10 s), no latency target.
    pub fn new(rate: f64, burst: NonZeroU32) -> Result<PaceConfig, PaceError> {
        positive("rate", rate)?;
        let config = PaceConfig {
            rate,
            burst,
            min_rate: (rate * 0.05).max(0.1).min(rate),
            latency_target: None,
            decrease: 0.5,
            increase_per_sec: rate * 0.1,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the message names the field.
    pub fn validate(&self) -> Result<(), PaceError> {
        positive("rate", self.rate)?;
        positive("min_rate", self.min_rate)?;
        positive("increase_per_sec", self.increase_per_sec)?;
        if self.min_rate > self.rate {
            return Err(PaceError::MinAboveRate {
                min_rate: self.min_rate,
                rate: self.rate,
            });
        }
        if !(self.decrease > 0.0 && self.decrease < 1.0) {
            return Err(PaceError::Decrease(self.decrease));
        }
        Ok(())
    }
}

fn positive(field: &'static str, value: f64) -> Result<(), PaceError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(PaceError::NotPositive { field, value })
    }
}

/// governor's clock, read from tokio's: real time normally, virtual time on a paused test
/// runtime. Instants are durations since the clock was made.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

#[derive(Debug)]
struct State {
    limiter: Arc<Limiter>,
    rate: f64,
    last_increase: Duration,
    last_decrease: Option<Duration>,
    held: Duration,
    decreases: u64,
}

/// One stage's write pacer. Shared by reference between that stage's repair tasks.
#[derive(Debug)]
pub struct Pacer {
    config: PaceConfig,
    clock: TokioClock,
    state: Mutex<State>,
}

/// Congestion decisions are at most this often.
const ADAPT_EVERY: Duration = Duration::from_secs(1);

impl Pacer {
    /// A pacer at the configured full rate. Must be called inside a tokio runtime.
    pub fn new(config: PaceConfig) -> Result<Pacer, PaceError> {
        config.validate()?;
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        let limiter = Arc::new(limiter(config.rate, config.burst, &clock));
        let now = clock.now();
        Ok(Pacer {
            state: Mutex::new(State {
                limiter,
                rate: config.rate,
                last_increase: now,
                last_decrease: None,
                held: Duration::ZERO,
                decreases: 0,
            }),
            config,
            clock,
        })
    }

    /// Waits until one more write is allowed, and returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = tokio::time::Instant::now();
        let mut waited = false;
        loop {
            let limiter = self.lock().limiter.clone();
            match limiter.check() {
                Ok(()) => break,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    // A zero wait can only come from rounding; sleep anyway rather than spin.
                    // tokio's timer has millisecond resolution, so short waits sleep a little
                    // longer; the limiter lets the next callers catch up within the burst.
                    tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
                    waited = true;
                }
            }
        }
        if !waited {
            return Duration::ZERO;
        }
        let took = start.elapsed();
        self.lock().held += took;
        took
    }

    /// A write succeeded after `latency`. Above the latency target this is congestion;
    /// otherwise the rate recovers, once per second, toward the configured rate.
    pub fn record_success(&self, latency: Duration) {
        if self.config.latency_target.is_some_and(|target| latency > target) {
            self.congestion();
            return;
        }
        let now = self.clock.now();
        let mut state = self.lock();
        let since = now.saturating_sub(state.last_increase);
        if since < ADAPT_EVERY {
            return;
        }
        state.last_increase = now;
        if state.rate < self.config.rate {
            let rate = (state.rate + self.config.increase_per_sec * since.as_secs_f64()).min(self.config.rate);
            self.set_rate(&mut state, rate);
        }
    }

    /// A write failed (timeout, lock conflict, server error): congestion.
    pub fn record_error(&self) {
        self.congestion();
    }

    fn congestion(&self) {
        let now = self.clock.now();
        let mut state = self.lock();
        if state
            .last_decrease
            .is_some_and(|at| now.saturating_sub(at) < ADAPT_EVERY)
        {
            return;
        }
        state.last_decrease = Some(now);
        state.last_increase = now;
        state.decreases += 1;
        let rate = (state.rate * self.config.decrease).max(self.config.min_rate);
        self.set_rate(&mut state, rate);
    }

    fn set_rate(&self, state: &mut State, rate: f64) {
        if rate != state.rate {
            state.rate = rate;
            state.limiter = Arc::new(limiter(rate, self.config.burst, &self.clock));
        }
    }

    /// The rate in force now, writes per second.
    pub fn current_rate(&self) -> f64 {
        self.lock().rate
    }

    /// Total time callers of [`Pacer::acquire`] waited.
    pub fn held_back(&self) -> Duration {
        self.lock().held
    }

    /// How many times congestion lowered the rate.
    pub fn decreases(&self) -> u64 {
        self.lock().decreases
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a plain
        // assignment.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn limiter(rate: f64, burst: NonZeroU32, clock: &TokioClock) -> Limiter {
    // One cell every 1/rate seconds; rates are validated positive and finite, and a period
    // of at least one nanosecond always makes a quota.
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period).expect("non-zero period").allow_burst(burst);
    RateLimiter::direct_with_clock(quota, clock.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// Virtual seconds taken to acquire `n` permits.
    async fn time_to_acquire(pacer: &Pacer, n: u32) -> f64 {
        let start = tokio::time::Instant::now();
        for _ in 0..n {
            pacer.acquire().await;
        }
        start.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn holds_the_configured_rate() {
        let pacer = Pacer::new(PaceConfig::new(2000.0, nz(20)).unwrap()).unwrap();
        // 20 at once (the burst), then one every 0.5 ms: 10,000 permits take 4.99 s.
        let took = time_to_acquire(&pacer, 10_000).await;
        assert!((took - 4.99).abs() < 0.01, "took {took} s");
        let held = pacer.held_back().as_secs_f64();
        assert!((held - took).abs() < 0.01, "held {held} s of {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_free_after_idle() {
        let pacer = Pacer::new(PaceConfig::new(10.0, nz(5)).unwrap()).unwrap();
        assert_eq!(time_to_acquire(&pacer, 5).await, 0.0);
        tokio::time::sleep(Duration::from_secs(60)).await;
        // Idle time refills the burst but never more than the burst.
        let took = time_to_acquire(&pacer, 7).await;
        assert!((took - 0.2).abs() < 1e-6, "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_halve_once_per_second_and_recover() {
        let pacer = Pacer::new(PaceConfig::new(1000.0, nz(1)).unwrap()).unwrap();
        for _ in 0..50 {
            pacer.record_error();
        }
        assert_eq!(pacer.current_rate(), 500.0, "a burst of errors halves once");
        assert_eq!(pacer.decreases(), 1);
        // At 500/s, 1,000 permits take about 2 s.
        let took = time_to_acquire(&pacer, 1000).await;
        assert!((took - 2.0).abs() < 0.01, "took {took} s");

        tokio::time::advance(Duration::from_secs(1)).await;
        pacer.record_error();
        assert_eq!(pacer.current_rate(), 250.0);

        // Recovery: +100/s per second without congestion, capped at the configured rate.
        for expected in [350.0, 450.0, 550.0, 650.0, 750.0, 850.0, 950.0, 1000.0, 1000.0] {
            tokio::time::advance(Duration::from_secs(1)).await;
            pacer.record_success(Duration::from_millis(1));
            assert!(
                (pacer.current_rate() - expected).abs() < 1e-9,
                "{} != {expected}",
                pacer.current_rate()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_writes_are_congestion_and_floor_holds() {
        let mut config = PaceConfig::new(100.0, nz(1)).unwrap();
        config.latency_target = Some(Duration::from_millis(50));
        let pacer = Pacer::new(config).unwrap();
        pacer.record_success(Duration::from_millis(10));
        assert_eq!(pacer.current_rate(), 100.0);
        for _ in 0..20 {
            pacer.record_success(Duration::from_millis(200));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(pacer.current_rate(), 5.0, "floor is 5% of the rate");
    }

    #[test]
    fn bad_settings_name_the_field() {
        assert_eq!(
            PaceConfig::new(0.0, nz(1)).unwrap_err().to_string(),
            "rate must be a positive, finite number, got 0"
        );
        assert!(PaceConfig::new(f64::NAN, nz(1)).is_err());
        let mut c = PaceConfig::new(10.0, nz(1)).unwrap();
        c.min_rate = 20.0;
        assert!(c.validate().unwrap_err().to_string().contains("min_rate"));
        c.min_rate = 1.0;
        c.decrease = 1.0;
        assert!(c.validate().unwrap_err().to_string().contains("decrease"));
    }
}
