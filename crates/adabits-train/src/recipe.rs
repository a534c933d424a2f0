//! The starting settings of a run: the official code's, or the project's recipe that trains
//! from a random start (docs/recipe.md).

use adabits_models::{Architecture, ModelConfig};
use adabits_quant::{BitWidth, LinearEval, QuantScheme, RescaleType};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::{DataSource, SyntheticConfig};
use crate::strategy::Strategy;

/// The settings a preset and the command line start from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Recipe {
    /// The official flags with the changes that make a random start train (docs/recipe.md):
    /// the centered weight scheme, a classifier initialised at N(0, 1), rescaled by its fan-in
    /// and evaluated in its training form, MobileNet-V2's bottleneck outputs clipped on both
    /// sides, depthwise convolutions' inputs at 4 bits or more, the gradient clipped to norm 5,
    /// and a full-precision stage as long as the training that follows (unless --fp-epochs
    /// says otherwise).
    #[default]
    Adabits,
    /// The official code's settings exactly (parity); stays at chance from a random start.
    Official,
}

impl Recipe {
    /// The recipe's configuration of the default run: ResNet-20 at {8, 6, 5, 4} on the
    /// built-in synthetic set, trained jointly for 2 epochs of batch 128, with the recipe's
    /// settings ([`apply`](Self::apply)); its full-precision stage is not set
    /// ([`full_precision_epochs`](Self::full_precision_epochs)).
    pub fn config(self) -> TrainConfig {
        let bits = "8,6,5,4".parse().expect("a valid bit-width list");
        let mut config = TrainConfig::new(
            ModelConfig::new(Architecture::CifarResNet(20), bits),
            DataSource::Synthetic(SyntheticConfig::default()),
            Strategy::Joint { distill: false },
        );
        self.apply(&mut config);
        config
    }

    /// Sets the recipe's model and optimiser settings in `config` (nothing for the official
    /// recipe).
    pub fn apply(self, config: &mut TrainConfig) {
        if self == Self::Official {
            return;
        }
        let model = &mut config.model;
        model.double_side = true;
        model.quant.weight_scheme = QuantScheme::Centered;
        model.quant.classifier_init_std = 1.0;
        model.quant.linear_rescale_type = Some(RescaleType::FanIn);
        model.quant.linear_eval = LinearEval::TrainForm;
        model.quant.depthwise_bita_min = Some(BitWidth::new(4).expect("a valid bit-width"));
        config.optim.clip_grad_norm = Some(5.0);
    }

    /// The recipe's full-precision stage before `epochs` of training: as long as the training
    /// for the adabits recipe, none for the official one.
    pub fn full_precision_epochs(self, epochs: usize) -> usize {
        match self {
            Self::Adabits => epochs,
            Self::Official => 0,
        }
    }

    /// What the recipe changes from the official code, in a line (the stages and the gradient
    /// clip are the run's configuration, which a preset or flags may change).
    pub fn summary(self) -> &'static str {
        match self {
            Self::Adabits => {
                "adabits (centered weights; classifier N(0, 1), rescaled by its fan-in; see docs/recipe.md)"
            }
            Self::Official => "official (parity; collapses from a random start)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recipes as JSON, as the CLI wrote them before the recipe became a type: the typed
    /// recipe must give the same configuration.
    #[test]
    fn the_recipes_are_the_configurations_the_cli_built_from_json() {
        let base = serde_json::json!({
            "model": {"arch": "resnet20", "bits": [8, 6, 5, 4]},
            "data": {"kind": "synthetic"},
            "strategy": {"kind": "joint"},
            "epochs": 2,
            "batch_size": 128,
        });
        let official: TrainConfig = serde_json::from_value(base.clone()).unwrap();
        assert_eq!(Recipe::Official.config(), official);
        let mut adabits = base;
        crate::merge_json(
            &mut adabits,
            serde_json::json!({"model": {
                "double_side": true,
                "quant": {
                    "weight_scheme": "centered",
                    "classifier_init_std": 1.0,
                    "linear_rescale_type": "fanin",
                    "linear_eval": "train_form",
                    "depthwise_bita_min": 4,
                },
            },
            "optim": {"clip_grad_norm": 5.0}}),
        );
        let adabits: TrainConfig = serde_json::from_value(adabits).unwrap();
        assert_eq!(Recipe::Adabits.config(), adabits);
        assert_ne!(Recipe::Adabits.config(), Recipe::Official.config());
    }

    #[test]
    fn a_preset_of_another_kind_replaces_the_section() {
        let preset = serde_json::json!({
            "data": {"kind": "cifar10", "dir": "data/cifar"},
            "strategy": {"kind": "progressive"},
            "optim": {"schedule": {"kind": "multi_step", "milestones": [1], "gamma": 0.5}},
        });
        let config = Recipe::Official.config().with_preset(preset).unwrap();
        assert_eq!(
            config.data,
            DataSource::Cifar10 {
                dir: "data/cifar".into()
            }
        );
        assert_eq!(
            config.strategy,
            Strategy::Progressive { low_to_high: false }
        );
        // A section of the same kind merges: only the given field changes.
        let config = config
            .with_preset(serde_json::json!({"optim": {"schedule": {"gamma": 0.2}}}))
            .unwrap();
        assert_eq!(
            config.optim.schedule,
            crate::Schedule::MultiStep {
                milestones: vec![1],
                gamma: 0.2
            }
        );
        let unknown = Recipe::Official
            .config()
            .with_preset(serde_json::json!({"epoch": 3}));
        assert!(unknown.unwrap_err().to_string().contains("epoch"));
    }
}
