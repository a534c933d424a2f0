//! Continuing a run: checking its configuration against the saved one, resuming from its
//! latest checkpoint, and starting after another run's full-precision stage.

use crate::error::{TrainError, run_file};
use crate::run_dir::{RunDir, Which};

use super::Run;

impl Run<'_> {
    /// Checks the configuration against the saved one (only `max_steps` may change).
    pub(super) fn check_config(&self) -> Result<(), TrainError> {
        // Read through the type, so that a setting added since the run started (absent from
        // its file) compares at its default.
        let then = serde_json::to_value(self.dir.read_config()?).expect("a config serialises");
        if let Some((field, there, here)) = self.config.first_difference(&then, &["max_steps"]) {
            return Err(run_file(
                &self.dir.config_path(),
                format!(
                    "the run was started with another configuration: `{field}` is {there} there and {here} here; resume with the same settings (only max_steps may change) or use a new --out"
                ),
            ));
        }
        Ok(())
    }

    /// Starts this new run at the end of `source`'s full-precision stage (see
    /// [`RunOptions::fp_stage_from`]) and writes a checkpoint there, so that the run no longer
    /// needs `source`.
    pub(super) fn start_after_full_precision(&mut self, source: &RunDir) -> Result<(), TrainError> {
        let source_config = source.read_config()?;
        let theirs = serde_json::to_value(&source_config).expect("a config serialises");
        if let Some((field, there, here)) = self.config.full_precision_difference(&theirs) {
            return Err(run_file(
                &source.config_path(),
                format!(
                    "trains another full-precision stage than this run: `{field}` is {there} there and {here} here"
                ),
            ));
        }
        let (trained, state) = source
            .full_precision_stage_end(source_config.model.init(self.ad), self.config.fp_epochs)?;
        let (model, report) = adabits_models::adapt_from(&trained, self.model.clone())
            .map_err(|e| TrainError::Internal(format!("taking the full-precision stage: {e}")))?;
        if let Some(key) = report.kept_initial.first().or(report.dropped.first()) {
            return Err(TrainError::Internal(format!(
                "taking the full-precision stage: `{key}` is in one model and not the other"
            )));
        }
        self.model = model;
        self.state = state;
        self.dir.continue_logs_from(source, &self.state)?;
        self.checkpoint(false)
    }

    /// Loads the latest checkpoint.
    pub(super) fn resume(&mut self) -> Result<(), TrainError> {
        let model = self.config.model.init(self.ad);
        let (model, state) = self.dir.resume_latest(model, &mut self.sgd, self.ad)?;
        self.model = model;
        self.ema = match state.ema_updates {
            Some(_) => Some(
                self.dir
                    .load_ema(Which::Latest, self.config.model.init(self.ad))?,
            ),
            None => None,
        };
        self.checkpoint = Some(state.step);
        self.state = state;
        Ok(())
    }
}
