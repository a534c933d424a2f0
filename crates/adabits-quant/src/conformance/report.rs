//! What a run of the test vectors found: one report per case, one check per compared tensor.

use std::fmt;

/// The outcome of one compared tensor.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was compared, e.g. `output y` or `gradient alpha_param`.
    pub what: String,
    /// The largest absolute difference found.
    pub max_abs_error: f64,
    /// The first failing element, described, if any.
    pub failure: Option<String>,
}

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// Every comparison made.
    pub checks: Vec<Check>,
    /// A problem that stopped the case (unknown op, missing field).
    pub error: Option<String>,
}

impl CaseReport {
    /// Whether the case ran and every comparison passed.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && !self.checks.is_empty()
            && self.checks.iter().all(|c| c.failure.is_none())
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.passed() { "ok" } else { "FAILED" };
        let max = self
            .checks
            .iter()
            .map(|c| c.max_abs_error)
            .fold(0.0, f64::max);
        write!(
            f,
            "{:<40} {status:<6} {} checks, max |error| {max:.2e}",
            self.name,
            self.checks.len()
        )?;
        if let Some(e) = &self.error {
            write!(f, "\n    error: {e}")?;
        }
        for check in &self.checks {
            if let Some(failure) = &check.failure {
                write!(f, "\n    {}: {failure}", check.what)?;
            }
        }
        Ok(())
    }
}
