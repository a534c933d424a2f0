//! Switchable-precision layers and models of AdaBits.
//!
//! Available: [`QConv2d`] and [`QLinear`], whose weights and input activations are quantized at
//! the bit-width passed to `forward`, so one set of weights runs at every bit-width, and
//! [`SwitchBatchNorm2d`], one BatchNorm per bit-width; [`QuantSettings`], the official global
//! flags; the CIFAR ResNets ([`CifarResNet`]), [`MobileNetV1`], [`MobileNetV2`] and the ImageNet
//! ResNets ([`ImageNetResNet`]); the cost profiler ([`cost`]); atomic checkpoints
//! ([`save_model`], [`load_model`]); and PyTorch state dicts in the official layout
//! ([`import_pytorch`], [`export_official`]), including the official full-precision import that
//! copies one BatchNorm to every bit-width ([`ImportMode::FullPrecision`]); and deployment: one
//! low-bit [`Artifact`] for every bit-width and the [`Runtime`] that runs it, switching
//! bit-width in memory, with [`select`] to pick a bit-width for a budget.
//!
//! # Example
//!
//! Picking the bit-width of an artifact's table that fits a size budget:
//!
//! ```
//! use adabits_models::{BitRow, Budget, select};
//!
//! let row = |bits: &str, top1, model_bytes| BitRow {
//!     bits: bits.parse().unwrap(), // an entry: a bit-width, or a pair such as "w4a8"
//!     top1: Some(top1),
//!     gbitops: 0.0,
//!     model_bytes,
//! };
//! let table = [row("8", 51.7, 17524.0), row("6", 52.4, 13308.0), row("4", 51.2, 9092.0)];
//! let budget = Budget { max_bytes: Some(12000), ..Budget::default() };
//! let choice = select(&table, &budget);
//! assert_eq!(choice.chosen.map(|r| r.bits.to_string()), Some("4".into()));
//! assert!(choice.reasons.iter().any(|r| r.contains("13308 bytes > 12000")));
//! ```

// Libraries print nothing: they return typed errors and report through their callers.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod builder;
mod checkpoint;
mod deploy;
mod import;
mod layers;
mod layout;
mod mobilenet_v1;
mod mobilenet_v2;
mod plan;
mod profile;
mod resnet_cifar;
mod resnet_imagenet;
mod settings;
mod state_dict;
mod surgery;
mod zoo;

pub use adabits_quant;
pub use checkpoint::{CheckpointError, load_model, save_model, write_atomically};
pub use deploy::{
    ARTIFACT_FORMAT, ARTIFACT_VERSION, Artifact, ArtifactError, ArtifactHeader, BitRow, Budget,
    EntryBits, Runtime, Selection, artifact_model, entry_precision, export_artifact, file_entry,
    select,
};
pub use import::{ImportError, ImportMode, ImportReport, import_official, import_pytorch};
pub use layers::{
    BnEntry, BnSharing, ConvBnRelu, LayerQuant, QConv2d, QConv2dConfig, QLinear, QLinearConfig,
    SwitchBatchNorm2d, SwitchBatchNorm2dConfig,
};
pub use layout::{LayerMut, OfficialLayout, export_official};
pub use mobilenet_v1::{MobileNetV1, MobileNetV1Config};
pub use mobilenet_v2::{InvertedResidual, MobileNetV2, MobileNetV2Config};
pub use plan::{
    Plan, PlanError, ResolvedPlan, UNDER_PLAN, quantized_layers, with_plan, without_plan,
};
pub use profile::{
    Accounting, CostReport, LayerCost, LayerShape, OpKind, avg_pool_shape, cost, cost_plan,
};
pub use resnet_cifar::{BasicBlock, CifarResNet, CifarResNetConfig};
pub use resnet_imagenet::{Bottleneck, ImageNetResNet, ImageNetResNetConfig};
pub use settings::{InputTransform, QuantSettings, TransformImages};
pub use state_dict::{StateDict, StateDictError, StateTensor};
pub use surgery::{SurgeryError, adapt_from, scale_alpha, spread_first, with_added_bits};
pub use zoo::{Architecture, Model, ModelConfig};
