//! The training strategies: which stages a run trains, and what is evaluated after each.

use adabits_quant::{At, BitWidth, BitWidths};
use serde::{Deserialize, Serialize};

/// How the bit-widths are trained (docs/method.md §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// One bit-width: the model's list must hold exactly one.
    Individual,
    /// AdaBits: every step runs a forward and backward pass at each bit-width of the list, in
    /// order, summing the gradients, then takes one optimiser step.
    Joint {
        /// Each lower bit-width also learns from the next higher one's soft outputs
        /// (KL divergence, the Any-Precision recipe).
        #[serde(default)]
        distill: bool,
    },
    /// Train at the highest bit-width, evaluate at every bit-width, with and without BatchNorm
    /// calibration. The model shares one BatchNorm and one clipping level across bit-widths.
    Direct,
    /// Train at the highest bit-width, then fine-tune at each lower one in turn (or from the
    /// lowest up), reporting every bit-width (BatchNorm-calibrated) after each stage. Shared
    /// BatchNorm and clipping levels, as for [`Strategy::Direct`].
    Progressive {
        /// Go from the lowest bit-width up instead.
        #[serde(default)]
        low_to_high: bool,
    },
}

impl Strategy {
    /// The name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The strategy without its options.
    pub fn kind(&self) -> StrategyKind {
        match self {
            Self::Individual => StrategyKind::Individual,
            Self::Joint { .. } => StrategyKind::Joint,
            Self::Direct => StrategyKind::Direct,
            Self::Progressive { .. } => StrategyKind::Progressive,
        }
    }
}

/// A [`Strategy`] without its options: what a command line names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum StrategyKind {
    /// One bit-width (the model's list must name exactly one).
    Individual,
    /// AdaBits: every bit-width at every step.
    Joint,
    /// Train at the highest bit-width, evaluate all, with and without BN calibration.
    Direct,
    /// Train at the highest bit-width, then fine-tune at each lower one.
    Progressive,
}

impl StrategyKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Individual => "individual",
            Self::Joint => "joint",
            Self::Direct => "direct",
            Self::Progressive => "progressive",
        }
    }

    /// The strategy with its options off.
    pub fn strategy(self) -> Strategy {
        match self {
            Self::Individual => Strategy::Individual,
            Self::Joint => Strategy::Joint { distill: false },
            Self::Direct => Strategy::Direct,
            Self::Progressive => Strategy::Progressive { low_to_high: false },
        }
    }
}

/// One stage of training: the entries trained at each step, for how long, how fast.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stage {
    pub(crate) bits: Vec<At>,
    pub(crate) epochs: usize,
    pub(crate) lr_factor: f64,
    /// The full-precision stage of `fp_epochs`.
    pub(crate) full_precision: bool,
}

/// One evaluation of every bit-width after a stage.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StageEvaluation {
    /// The label it is reported under.
    pub(crate) label: String,
    /// Whether each bit-width's BatchNorm statistics are re-estimated first.
    pub(crate) calibrated: bool,
}

impl Strategy {
    /// What is evaluated after stage `index` (from 0) of a run, which trained `stage` (not
    /// the full-precision stage, whose BatchNorm and clipping levels go to every bit-width
    /// instead): the strategy's own result for individual and joint training; for direct
    /// training the plain and the BatchNorm-calibrated model; for progressive training the
    /// calibrated model after each stage.
    pub(crate) fn after_stage(&self, index: usize, stage: &Stage) -> Vec<StageEvaluation> {
        let plain = |label: String| StageEvaluation {
            label,
            calibrated: false,
        };
        let calibrated = |label: String| StageEvaluation {
            label,
            calibrated: true,
        };
        match self {
            Strategy::Individual | Strategy::Joint { .. } => vec![plain(self.name().into())],
            Strategy::Direct => vec![
                plain("direct".into()),
                calibrated("direct + BN calibration".into()),
            ],
            Strategy::Progressive { .. } => vec![calibrated(format!(
                "after stage {} ({})",
                index + 1,
                stage.bits[0].precision.describe()
            ))],
        }
    }
}

impl Strategy {
    /// The stages of a run of `epochs` over the model's `bits`: a full-precision stage of
    /// `fp_epochs` first if any, then the strategy's; progressive fine-tuning stages last
    /// `finetune_epochs` (half of `epochs`, at least 1, by default).
    pub(crate) fn stages(
        &self,
        bits: &BitWidths,
        epochs: usize,
        fp_epochs: usize,
        finetune_epochs: Option<usize>,
    ) -> Vec<Stage> {
        let top = bits
            .find(bits.max())
            .expect("the highest entry is an entry");
        let bits: Vec<At> = bits.entries().collect();
        let stage = |bits: Vec<At>, epochs: usize, lr_factor: f64| Stage {
            bits,
            epochs,
            lr_factor,
            full_precision: false,
        };
        let mut stages = Vec::new();
        if fp_epochs > 0 {
            stages.push(Stage {
                full_precision: true,
                ..stage(vec![At::new(0, BitWidth::FULL)], fp_epochs, 1.0)
            });
        }
        match *self {
            Strategy::Individual | Strategy::Joint { .. } => {
                stages.push(stage(bits, epochs, 1.0));
            }
            Strategy::Direct => stages.push(stage(vec![top], epochs, 1.0)),
            Strategy::Progressive { low_to_high } => {
                let mut order = bits;
                order.sort_unstable_by_key(|at| std::cmp::Reverse(at.precision));
                if low_to_high {
                    order.reverse();
                }
                let finetune = finetune_epochs.unwrap_or((epochs / 2).max(1));
                for (i, b) in order.into_iter().enumerate() {
                    stages.push(if i == 0 {
                        stage(vec![b], epochs, 1.0)
                    } else {
                        stage(vec![b], finetune, 0.1)
                    });
                }
            }
        }
        stages
    }
}
