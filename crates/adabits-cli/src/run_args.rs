//! What the commands that read a run share: which run and checkpoint, where its data is, on
//! which device.

use std::path::{Path, PathBuf};

use adabits_train::data::DataSource;
use adabits_train::{SavedRun, Which, load_run};
use clap::{Args, ValueEnum};

use crate::device::DeviceArg;

/// Which checkpoint of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum WhichArg {
    /// The best by the run's criterion (mean top-1 by default).
    Best,
    /// The latest.
    Latest,
}

/// The run a command reads, and where.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The run directory (what `adabits train --out` wrote).
    #[arg(long, value_name = "RUN")]
    pub(crate) checkpoint: PathBuf,
    /// Which of the run's checkpoints.
    #[arg(long, value_enum, default_value_t = WhichArg::Best)]
    pub(crate) which: WhichArg,
    /// The data folder, if it moved since training.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The device to run on (one of the backends compiled into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    pub(crate) device: DeviceArg,
}

fn which(arg: WhichArg) -> Which {
    match arg {
        WhichArg::Best => Which::Best,
        WhichArg::Latest => Which::Latest,
    }
}

/// Loads the `arg` checkpoint of the run in `dir` onto `device`, with a hint on failure.
pub(crate) fn open_run(
    dir: &Path,
    arg: WhichArg,
    device: &burn::tensor::Device,
) -> anyhow::Result<SavedRun> {
    load_run(dir, which(arg), device)
        .map_err(|e| anyhow::anyhow!("{e}\nhint: RUN is the folder `adabits train --out` wrote"))
}

/// The run's data, with `data_dir` replacing its folder.
pub(crate) fn data_of(run: &SavedRun, data_dir: Option<&PathBuf>) -> anyhow::Result<DataSource> {
    let mut data = run.config.data.clone();
    if let Some(dir) = data_dir {
        match &mut data {
            DataSource::Cifar10 { dir: d }
            | DataSource::Cifar100 { dir: d }
            | DataSource::ImageFolder { dir: d, .. } => *d = dir.clone(),
            DataSource::Synthetic(_) => {
                anyhow::bail!("--data-dir given, but the run was trained on synthetic data")
            }
        }
    }
    Ok(data)
}
