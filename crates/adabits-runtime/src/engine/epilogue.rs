//! What follows a layer's integer sums: the float epilogue (scales, BatchNorm, residual, ReLU,
//! the next layer's codes) and where it writes.

use rayon::prelude::*;

use super::kernels::Wide;
use super::layer::Numerators;
use super::quantize::{LANES, Pact};

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
    /// The PACT of the one layer that reads this output: the epilogue writes its codes too.
    pub(crate) codes: Option<Pact>,
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
        let block = Block::of(epilogue);
        let whole = n - n % LANES;
        let (mult, add) = (&epilogue.mult[..n], &epilogue.add[..n]);
        for (r, (out, acc)) in out.chunks_exact_mut(n).zip(acc.chunks_exact(n)).enumerate() {
            let extra = if block.plus_inputs != 0 {
                block.plus_inputs * sums[r]
            } else {
                0
            };
            let mut codes = codes.as_deref_mut().map(|c| &mut c[r * n..(r + 1) * n]);
            for j in (0..whole).step_by(LANES) {
                let lanes = j..j + LANES;
                block.run(
                    extra,
                    acc[lanes.clone()].try_into().unwrap(),
                    mult[lanes.clone()].try_into().unwrap(),
                    add[lanes.clone()].try_into().unwrap(),
                    (&mut out[lanes.clone()]).try_into().unwrap(),
                    codes
                        .as_deref_mut()
                        .map(|c| (&mut c[lanes]).try_into().unwrap()),
                );
            }
            if whole < n {
                // The last channels, through a block with zeros in its unused lanes.
                let k = n - whole;
                let pad = |x: &[f32]| {
                    let mut b = [0.0; LANES];
                    b[..k].copy_from_slice(&x[whole..]);
                    b
                };
                let mut a = [0; LANES];
                a[..k].copy_from_slice(&acc[whole..]);
                let mut y = pad(out);
                let mut q = [0; LANES];
                block.run(extra, &a, &pad(mult), &pad(add), &mut y, Some(&mut q));
                out[whole..].copy_from_slice(&y[..k]);
                if let Some(codes) = codes {
                    codes[whole..].copy_from_slice(&q[..k]);
                }
            }
        }
    }
}

/// The epilogue's operations on one block of [`LANES`] outputs, fixed-size so that each is
/// one vector operation where the CPU has 16 lanes.
pub(crate) struct Block {
    /// `a` of the sums `a·Σ(stored·q) + c·Σq`.
    pub(crate) scale: i32,
    /// `c`.
    pub(crate) plus_inputs: i32,
    /// Whether the output buffer's value (a residual) is added.
    pub(crate) accumulate: bool,
    /// Whether a ReLU follows.
    pub(crate) relu: bool,
    /// The next layer's PACT, whose codes the epilogue writes.
    pub(crate) pact: Option<Pact>,
}

impl Block {
    /// The operations of `epilogue`.
    pub(crate) fn of(epilogue: &Epilogue) -> Self {
        Self {
            scale: epilogue.numerators.scale,
            plus_inputs: epilogue.numerators.plus_inputs,
            accumulate: epilogue.accumulate,
            relu: epilogue.relu,
            pact: epilogue.codes,
        }
    }

    /// `y (+)= (a·acc + extra)·mult + add`, then the ReLU, then the next layer's codes.
    #[inline(always)]
    fn run(
        &self,
        extra: i32,
        acc: &[i32; LANES],
        mult: &[f32; LANES],
        add: &[f32; LANES],
        y: &mut [f32; LANES],
        codes: Option<&mut [u8; LANES]>,
    ) {
        let mut v = [0.0f32; LANES];
        for (((v, &a), &m), &b) in v.iter_mut().zip(acc).zip(mult).zip(add) {
            *v = (self.scale * a + extra) as f32 * m + b;
        }
        if self.accumulate {
            // The residual: added to the BatchNorm's output, before the ReLU, as the model does.
            v.iter_mut().zip(y.iter()).for_each(|(v, &y)| *v += y);
        }
        if self.relu {
            v.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        *y = v;
        if let (Some(pact), Some(codes)) = (&self.pact, codes) {
            pact.block(&v, codes);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::engine::kernels::{self, Isa};
    use crate::engine::quantize::InputCodes;
    use crate::graph::Scheme;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every instruction set's epilogue gives the definition's values, and the next layer's
        /// codes of those values, bit for bit: any channel count (whole vectors and masked
        /// tails), the 8-bit input sums, a residual, the ReLU, each PACT form.
        #[test]
        fn every_instruction_set_gives_the_definition_s_outputs_and_codes(
            n in 1usize..70,
            rows in 1usize..20,
            odd in any::<bool>(),
            accumulate in any::<bool>(),
            relu in any::<bool>(),
            pact in 0u8..3,
            bits in 1u8..=8,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let mut float = |scale: f32| (next() % 2_000_001) as f32 / 1e6 * scale - scale;
            let acc: Vec<i32> = (0..rows * n).map(|_| (float(1.0) * 40_000.0) as i32).collect();
            let sums: Vec<i32> = (0..rows).map(|_| (float(1.0).abs() * 5_000.0) as i32).collect();
            let mult: Vec<f32> = (0..n).map(|_| float(1e-3)).collect();
            let add: Vec<f32> = (0..n).map(|_| float(2.0)).collect();
            let prior: Vec<f32> = (0..rows * n).map(|_| float(3.0)).collect();
            let numerators = if odd {
                Numerators { scale: 2, plus_inputs: 1 }
            } else {
                Numerators { scale: 1, plus_inputs: 0 }
            };
            let input = (pact > 0).then_some(InputCodes::Pact {
                alpha: 1.7,
                bits,
                scheme: if pact == 1 { Scheme::Original } else { Scheme::Modified },
                double_sided: !relu,
            });
            let epilogue = Epilogue {
                numerators,
                mult: mult.clone(),
                add: add.clone(),
                relu,
                offset: 0,
                accumulate,
                codes: input.and_then(InputCodes::pact),
            };
            // The definition, value by value.
            let expected: Vec<f32> = (0..rows * n)
                .map(|i| {
                    let (r, o) = (i / n, i % n);
                    let sum = numerators.scale * acc[i] + numerators.plus_inputs * sums[r];
                    let mut y = sum as f32 * mult[o] + add[o];
                    if accumulate {
                        y += prior[i];
                    }
                    if relu { y.max(0.0) } else { y }
                })
                .collect();
            let mut expected_codes = Vec::new();
            if let Some(input) = input {
                input.codes(Isa::Scalar, &expected, &mut expected_codes, 1).unwrap();
            }
            for isa in Isa::available() {
                let mut out = prior.clone();
                let mut codes = vec![0u8; rows * n];
                kernels::epilogue(isa, Rows {
                    epilogue: &epilogue,
                    acc: &acc,
                    sums: &sums,
                    n,
                    out: &mut out,
                    codes: input.map(|_| &mut codes[..]),
                });
                let same = out.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{:?}: {:?} against {:?}", isa, out, expected);
                if input.is_some() {
                    prop_assert_eq!(&codes, &expected_codes, "{:?}", isa);
                }
            }
        }
    }
}
