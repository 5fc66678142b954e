//! Values that change with the training step: the `rmax` / `dmax` clip
//! bounds of Batch Renormalization.
//!
//! A [`Schedule`] is piecewise linear in the step `n` (the number of
//! training batches seen before the current one): constant before its first
//! breakpoint and after its last, linear in between. The layers keep `n` on
//! the host ([`HostCounter`](crate::HostCounter)) and evaluate the schedule
//! there, in float64: the clip bounds reach the device as scalars.

use burn::config::Config;

/// A piecewise-linear function of the training step.
///
/// `points` are `(step, value)` breakpoints in increasing step order. One
/// point is a constant.
#[derive(Config, Debug, PartialEq)]
pub struct Schedule {
    /// Breakpoints `(step, value)`, steps strictly increasing, at least one.
    pub points: Vec<(f64, f64)>,
}

impl Schedule {
    /// The same value at every step.
    pub fn constant(value: f64) -> Self {
        Self {
            points: vec![(0.0, value)],
        }
    }

    /// `from_value` until `from_step`, linear to `to_value` at `to_step`,
    /// constant after.
    ///
    /// # Panics
    ///
    /// If `to_step <= from_step`.
    pub fn ramp(from_step: f64, from_value: f64, to_step: f64, to_value: f64) -> Self {
        Self::piecewise(vec![(from_step, from_value), (to_step, to_value)])
    }

    /// A general piecewise-linear schedule.
    ///
    /// # Panics
    ///
    /// If `points` is empty or its steps are not strictly increasing.
    pub fn piecewise(points: Vec<(f64, f64)>) -> Self {
        assert!(!points.is_empty(), "a Schedule needs at least one point");
        for pair in points.windows(2) {
            assert!(
                pair[1].0 > pair[0].0,
                "Schedule steps must strictly increase, received {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        Self { points }
    }

    /// The paper's `rmax`: 1 until step 5000, linear to 3 at step 40000.
    pub fn paper_rmax() -> Self {
        Self::ramp(5_000.0, 1.0, 40_000.0, 3.0)
    }

    /// The paper's `dmax`: 0 until step 5000, linear to 5 at step 25000.
    pub fn paper_dmax() -> Self {
        Self::ramp(5_000.0, 0.0, 25_000.0, 5.0)
    }

    /// The same shape on a step axis scaled by `factor`: breakpoint steps are
    /// multiplied by it. `Schedule::paper_rmax().compressed(1000.0 / 40_000.0)`
    /// runs the paper's ramp over a 1000-step training run.
    ///
    /// # Panics
    ///
    /// If `factor` is not positive.
    pub fn compressed(&self, factor: f64) -> Self {
        assert!(
            factor > 0.0,
            "Schedule::compressed expects a positive factor, received {factor}"
        );
        Self::piecewise(self.points.iter().map(|&(s, v)| (s * factor, v)).collect())
    }

    /// The step of the last breakpoint: from there on the value is constant.
    pub fn final_step(&self) -> f64 {
        self.points.last().map(|p| p.0).unwrap_or(0.0)
    }

    /// The value at `step`, on the host.
    pub fn value_at(&self, step: f64) -> f64 {
        let (first_step, first_value) = self.points[0];
        let mut value = first_value;
        let mut previous = (first_step, first_value);
        for &(s, v) in &self.points[1..] {
            let slope = (v - previous.1) / (s - previous.0);
            value += slope * (step - previous.0).clamp(0.0, s - previous.0);
            previous = (s, v);
        }
        value
    }
}
