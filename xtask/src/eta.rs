//! The overall progress of a reproduction: time since it started (the release build included)
//! and an estimate of the time left, from the training measured so far.

use std::time::Instant;

/// The progress of a job made of runs of known relative cost.
pub(crate) struct Eta {
    started: Instant,
    /// The cost of every run of the job, in passes (one pass: one epoch of the training set
    /// at one bit-width, forward and backward).
    total: f64,
    /// The cost of the runs done so far.
    done: f64,
    /// The seconds those runs took.
    seconds: f64,
}

impl Eta {
    /// A job that started at `started` and whose runs cost `total` passes.
    pub(crate) fn new(started: Instant, total: f64) -> Self {
        Self {
            started,
            total,
            done: 0.0,
            seconds: 0.0,
        }
    }

    /// Records a run of `cost` passes that took `seconds`.
    pub(crate) fn finished(&mut self, cost: f64, seconds: f64) {
        self.done += cost;
        self.seconds += seconds;
    }

    /// The minutes left at the rate measured so far, once a run has been timed.
    pub(crate) fn minutes_left(&self) -> Option<f64> {
        (self.done > 0.0 && self.seconds > 0.0)
            .then(|| (self.total - self.done).max(0.0) * self.seconds / self.done / 60.0)
    }

    /// One line: the time since the start and the estimate of what is left.
    pub(crate) fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64() / 60.0;
        let left = match self.minutes_left() {
            Some(m) => format!("about {m:.1} min left"),
            None => "time left known after the first run".into(),
        };
        format!(
            "{:.0} % of the training done, {elapsed:.1} min since the start (build included), {left}",
            100.0 * self.done / self.total.max(1e-9)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_is_the_work_left_at_the_measured_rate() {
        let mut eta = Eta::new(Instant::now(), 10.0);
        assert_eq!(eta.minutes_left(), None);
        assert!(eta.line().contains("known after the first run"));
        // 2 passes in 60 s: 30 s a pass; 8 left: 8 × 30 s = 4 min.
        eta.finished(2.0, 60.0);
        assert!((eta.minutes_left().unwrap() - 4.0).abs() < 1e-9);
        assert!(
            eta.line().starts_with("20 % of the training done"),
            "{}",
            eta.line()
        );
        eta.finished(8.0, 120.0);
        assert_eq!(eta.minutes_left(), Some(0.0));
    }
}
