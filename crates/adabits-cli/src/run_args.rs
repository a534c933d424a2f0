//! What the commands that read a run share (`eval`, `export`, `verify`, `calibrate`): which
//! run and checkpoint (`--checkpoint RUN --which best|latest|ema`), where its data is, on which
//! device.

use std::path::PathBuf;

use adabits_train::data::DataSource;
use adabits_train::{SavedRun, TrainError, Which, load_run};
use clap::Args;

use crate::device::DeviceArg;

/// The run a command reads, and where.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The run directory (what `adabits train --out` wrote).
    #[arg(long, value_name = "RUN")]
    pub(crate) checkpoint: PathBuf,
    /// Which of the run's checkpoints.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub(crate) which: Which,
    /// The data folder, if it moved since training.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The device to run on (one of the backends compiled into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    pub(crate) device: DeviceArg,
}

impl RunArgs {
    /// Loads the chosen checkpoint of the run onto `device`, with a hint on failure.
    pub(crate) fn open(&self, device: &burn::tensor::Device) -> anyhow::Result<SavedRun> {
        load_run(&self.checkpoint, self.which, device).map_err(|e| {
            let hint = match e {
                TrainError::NoCheckpoint {
                    which: Which::Best, ..
                } => "pass --which latest for the run's latest checkpoint",
                TrainError::NoCheckpoint { .. } => "resume the run with `adabits train --resume`",
                _ => "RUN is the folder `adabits train --out` wrote",
            };
            anyhow::anyhow!("{e}\nhint: {hint}")
        })
    }

    /// The run's data, with `--data-dir` replacing its folder.
    pub(crate) fn data_of(&self, run: &SavedRun) -> anyhow::Result<DataSource> {
        let mut data = run.config.data.clone();
        if let Some(dir) = &self.data_dir {
            match data.dir_mut() {
                Some(slot) => *slot = dir.clone(),
                None => {
                    anyhow::bail!("--data-dir given, but the run was trained on synthetic data")
                }
            }
        }
        Ok(data)
    }
}

/// A run in one line, as the commands that read one title their output: the model, its
/// bit-widths, the data, the strategy and the checkpoint read
/// (`resnet20 8,6,5,4 on synthetic (joint), checkpoint RUN/checkpoints/…`).
pub(crate) fn title(run: &SavedRun) -> String {
    format!(
        "{} {} on {} ({}), checkpoint {}",
        run.config.model.arch,
        run.config.model.bits,
        run.config.data.name(),
        run.config.strategy.name(),
        run.checkpoint.display()
    )
}
