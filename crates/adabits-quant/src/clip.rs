//! Clipping levels: one learnable PACT `α` per bit-width (Switchable Clipping Level, S-CL), or one
//! shared by all bit-widths (Vanilla AdaBits).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor};

use crate::{At, BitPolicy, BitWidth, BitWidths};

/// The official initial clipping level of every quantized convolution's input.
pub const CONV_ALPHA_INIT: f64 = 8.0;
/// The official initial clipping level of every quantized linear layer's input.
pub const LINEAR_ALPHA_INIT: f64 = 10.0;

/// Configuration of a layer's [`ClippingLevels`].
#[derive(Config, Debug)]
pub struct ClippingLevelsConfig {
    /// The bit-widths of the model, in training order.
    pub bits: BitWidths,
    /// The initial value of every `α` ([`CONV_ALPHA_INIT`] or [`LINEAR_ALPHA_INIT`]).
    pub init: f64,
    /// One `α` per bit-width (S-CL, the official `switch_alpha`) or one shared `α` (the
    /// Vanilla AdaBits ablation).
    #[config(default = true)]
    pub switchable: bool,
}

impl ClippingLevelsConfig {
    /// Creates the clipping levels: a parameter of shape `[len(bits)]` filled with `init`
    /// (switchable) or of shape `[1]` (shared), on `device`.
    pub fn init(&self, device: &Device) -> ClippingLevels {
        let len = if self.switchable { self.bits.len() } else { 1 };
        ClippingLevels {
            alpha: Param::from_tensor(Tensor::full([len], self.init, device)),
            bits: self.bits.clone(),
            switchable: self.switchable,
        }
    }
}

/// A layer's learnable PACT clipping levels.
///
/// With S-CL the parameter holds one entry per bit-width of the model's list; the entry used for
/// an activation bit-width `bita` is its position in the list, or 0 when `bita` is not in the
/// list (docs/method.md §4; `bita` is taken after `bita_min`, parity default P5). Only the active entry
/// receives gradient in a given bit-width's pass. The parameter is the raw `α_param`; the clip
/// uses `|α_param|`, and it gets no weight decay.
#[derive(Module, Debug)]
pub struct ClippingLevels {
    /// The raw clipping-level parameter, shape `[len(bits)]` (switchable) or `[1]` (shared).
    pub alpha: Param<Tensor<1>>,
    #[module(skip)]
    bits: BitWidths,
    #[module(skip)]
    switchable: bool,
}

impl ClippingLevels {
    /// The index into [`alpha`](Self::alpha) used for activation bit-width `bita`.
    pub fn index(&self, bita: BitWidth) -> usize {
        if self.switchable {
            self.bits.index_or_first(bita)
        } else {
            0
        }
    }

    /// The raw parameter entry `α_param[idx]` for `bita`, attached to the graph; pass it to
    /// [`crate::pact`], which clips at `|α_param[idx]|`.
    ///
    /// # Shapes
    ///
    /// Output `[1]`.
    pub fn select(&self, bita: BitWidth) -> Tensor<1> {
        self.select_index(self.index(bita))
    }

    /// The raw parameter entry of the model's list entry `entry` (the shared `α` when the
    /// levels are not switchable), attached to the graph.
    ///
    /// # Panics
    ///
    /// Panics if `entry` is not an entry of the list.
    ///
    /// # Shapes
    ///
    /// Output `[1]`.
    pub fn select_entry(&self, entry: usize) -> Tensor<1> {
        assert!(
            entry < self.bits.len(),
            "entry {entry} of a list of {} bit-widths",
            self.bits.len()
        );
        self.select_index(self.entry_index(entry))
    }

    /// The index into [`alpha`](Self::alpha) the official code clips entry `at` with, for a
    /// layer with `policy`: the position of the activation bit-width the policy resolves the
    /// entry to among the list's bit-widths, 0 when absent (docs/method.md §4). For a uniform
    /// entry it is [`index`](Self::index), what this crate uses too; for a `wWaA` entry the
    /// official code takes it where this crate takes the entry's own level
    /// ([`entry_index`](Self::entry_index); docs/decisions/0002-precisions-and-plans.md).
    pub fn official_index(&self, at: At, policy: &BitPolicy) -> usize {
        self.index(at.precision.resolve(policy).bita)
    }

    /// The index into [`alpha`](Self::alpha) used for the model's list entry `entry` (a
    /// `wWaA` entry, or any entry under a precision plan): the entry itself, or 0 when the
    /// levels are shared.
    pub fn entry_index(&self, entry: usize) -> usize {
        if self.switchable { entry } else { 0 }
    }

    fn select_index(&self, index: usize) -> Tensor<1> {
        let alpha = self.alpha.val();
        if alpha.dims()[0] == 1 {
            return alpha;
        }
        let indices = Tensor::<1, Int>::from_ints([index as i64], &alpha.device());
        alpha.select(0, indices)
    }

    /// Whether there is one `α` per bit-width.
    pub fn is_switchable(&self) -> bool {
        self.switchable
    }

    /// The model's bit-widths these levels are indexed by.
    pub fn bits(&self) -> &BitWidths {
        &self.bits
    }
}
