//! `ModelConfig::init_seeded` while other threads create models.
//!
//! A test binary of its own: the backends' random generator is process-wide, and in the `it`
//! suite other tests draw from it (random inputs, unseeded models) while this one runs, which
//! no lock of the library can exclude. Here nothing else draws, so the test checks exactly the
//! library's promise: callers of `init_seeded` never see each other's seeds. (It failed on CI
//! in the `it` suite on lavapipe, with `resnet20_runs_forward_and_backward_at_every_bit_width`
//! drawing its input images on the next test thread.)

use adabits_models::{Architecture, ModelConfig};
use burn::module::Module;
use burn::tensor::Tensor;

mod device;
use device::device;

/// Every float parameter of `model`, in visiting order, as bits.
fn parameter_bits<M: Module>(model: &M) -> Vec<u32> {
    struct Collect(Vec<u32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let values = param.val().into_data();
            self.0.extend(values.iter::<f32>().map(f32::to_bits));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

#[test]
fn a_seed_gives_the_same_weights_while_other_threads_create_models() {
    // Threads creating models at once, with two seeds: the generator is process-wide, so
    // without `init_seeded`'s lock a thread's weights come from another thread's seed.
    let config = ModelConfig::new(Architecture::CifarResNet(8), "4,2".parse().unwrap())
        .with_width_mult(0.25);
    let device = device();
    let reference: Vec<Vec<u32>> = [1, 2]
        .iter()
        .map(|&seed| parameter_bits(&config.init_seeded(seed, &device).unwrap()))
        .collect();
    assert_ne!(reference[0], reference[1]);
    let drawn: Vec<(usize, Vec<u32>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (config, device) = (&config, &device);
                scope.spawn(move || {
                    (0..3)
                        .map(|round| {
                            let which = (t + round) % 2;
                            let model = config.init_seeded(which as u64 + 1, device).unwrap();
                            (which, parameter_bits(&model))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    for (which, bits) in drawn {
        assert!(
            bits == reference[which],
            "seed {} drew other weights",
            which + 1
        );
    }
}
