//! What follows a layer's integer sums: the float epilogue (scales, BatchNorm, residual, ReLU,
//! the next layer's codes) and where it writes.

use rayon::prelude::*;

use super::kernels::Wide;
use super::layer::Numerators;
use super::quantize::InputCodes;

/// What follows the integer sums.
#[derive(Clone, Debug)]
pub(crate) struct Epilogue {
    /// How the sums are formed.
    pub(crate) numerators: Numerators,
    /// Per output channel: the product of the input step, the weight scale, `1/D` and the
    /// BatchNorm's scale.
    pub(crate) mult: Vec<f32>,
    /// Per output channel: the BatchNorm's bias (with the layer's bias folded in).
    pub(crate) add: Vec<f32>,
    /// Whether a ReLU follows.
    pub(crate) relu: bool,
    /// For a grouped convolution with double-sided inputs: `A`, the codes' value being
    /// `2q − A` steps (0 otherwise; a dense one has the term folded into `mult` and `add`).
    pub(crate) offset: i32,
    /// Whether the output buffer holds a value to add (a residual) before the ReLU.
    pub(crate) accumulate: bool,
    /// The input codes of the one layer that reads this output: the epilogue writes them too.
    pub(crate) codes: Option<InputCodes>,
}

/// Where a convolution writes: its `f32` output (`[pixels][channels]`, holding the residual
/// when the epilogue accumulates), and the next layer's codes when the epilogue makes them.
#[derive(Debug)]
pub(crate) struct Output<'a> {
    /// The output values.
    pub(crate) values: &'a mut [f32],
    /// The next layer's codes, one per value.
    pub(crate) codes: Option<&'a mut [u8]>,
}

impl Output<'_> {
    /// Runs `f(task, values, codes)` on chunks of `chunk` values (and the codes beside them),
    /// tasks at least `split` chunks long.
    pub(crate) fn par_chunks<F>(self, chunk: usize, split: usize, f: F)
    where
        F: Fn(usize, &mut [f32], Option<&mut [u8]>) + Sync + Send,
    {
        match self.codes {
            Some(codes) => self
                .values
                .par_chunks_mut(chunk)
                .zip(codes.par_chunks_mut(chunk))
                .with_min_len(split)
                .enumerate()
                .for_each(|(i, (v, c))| f(i, v, Some(c))),
            None => self
                .values
                .par_chunks_mut(chunk)
                .with_min_len(split)
                .enumerate()
                .for_each(|(i, v)| f(i, v, None)),
        }
    }
}

/// The outputs of rows of integer sums `acc` (`[rows][n]`), with the rows' input sums where
/// the numerators need them.
pub(crate) struct Rows<'a> {
    pub(crate) epilogue: &'a Epilogue,
    pub(crate) acc: &'a [i32],
    pub(crate) sums: &'a [i32],
    pub(crate) n: usize,
    pub(crate) out: &'a mut [f32],
    pub(crate) codes: Option<&'a mut [u8]>,
}

impl Wide for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            epilogue,
            acc,
            sums,
            n,
            out,
            mut codes,
        } = self;
        let Numerators { scale, plus_inputs } = epilogue.numerators;
        for (r, (out, acc)) in out.chunks_exact_mut(n).zip(acc.chunks_exact(n)).enumerate() {
            let extra = if plus_inputs != 0 {
                plus_inputs * sums[r]
            } else {
                0
            };
            let constants = epilogue.mult.iter().zip(&epilogue.add);
            if epilogue.accumulate {
                // The residual: added to the BatchNorm's output, before the ReLU, as the model does.
                for ((y, &a), (&m, &b)) in out.iter_mut().zip(acc).zip(constants) {
                    *y += (scale * a + extra) as f32 * m + b;
                }
            } else {
                for ((y, &a), (&m, &b)) in out.iter_mut().zip(acc).zip(constants) {
                    *y = (scale * a + extra) as f32 * m + b;
                }
            }
            if epilogue.relu {
                out.iter_mut().for_each(|y| *y = y.max(0.0));
            }
            if let (Some(input), Some(codes)) = (epilogue.codes, codes.as_deref_mut()) {
                input.row(out, &mut codes[r * n..(r + 1) * n]);
            }
        }
    }
}
