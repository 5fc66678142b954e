//! Training loops and checkpoint round trips the resume tests share.

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use super::random::uniform;
use super::{assert_bits_eq, owned};

/// Shapes of a step's input and of its output (the upstream gradient).
pub type StepShapes<const D: usize> = [[usize; D]; 2];

/// SGD steps (learning rate 0.05) of `module` on the deterministic stream
/// from `first`: step `s` feeds `uniform(input, s, -1, 1)` and
/// backpropagates `sum(y * uniform(output, 500 + s, -1, 1))`. Returns the
/// module, each step's output, and each step's `grad_of(module, grads)`.
pub fn sgd_steps<M: Module, const D: usize>(
    mut module: M,
    (first, steps): (u64, u64),
    [input, output]: StepShapes<D>,
    forward: &impl Fn(&M, Tensor<D>) -> Tensor<D>,
    grad_of: &impl Fn(&M, &Gradients) -> TensorData,
    device: &Device,
) -> (M, Vec<TensorData>, Vec<TensorData>) {
    let mut optim = SgdConfig::new().init();
    let (mut outputs, mut grads_of) = (Vec::new(), Vec::new());
    for step in first..first + steps {
        let y = forward(&module, uniform::<D>(input, step, -1.0, 1.0, device));
        outputs.push(owned(y.clone().into_data()));
        let grads = y
            .mul(uniform::<D>(output, 500 + step, -1.0, 1.0, device))
            .sum()
            .backward();
        grads_of.push(owned(grad_of(&module, &grads)));
        let grads = GradientsParams::from_grads(grads, &module);
        module = optim.step(0.05, module, grads);
    }
    (module, outputs, grads_of)
}

/// `n + m` [`sgd_steps`] from `start()`, against `n` steps, `save_load`
/// (a checkpoint round trip, [`through_checkpoint`]) and `m` more from
/// another `start()`: every one of the `m` steps' outputs and gradients
/// must be bit-identical, and so must the two final modules' records
/// (every state tensor). Returns the two final modules (uninterrupted,
/// resumed) for the caller's own checks.
pub fn assert_resumes_bit_identically<M: Module, const D: usize>(
    start: impl Fn() -> M,
    (n, m): (u64, u64),
    shapes: StepShapes<D>,
    forward: impl Fn(&M, Tensor<D>) -> Tensor<D>,
    grad_of: impl Fn(&M, &Gradients) -> TensorData,
    save_load: impl FnOnce(&M) -> M,
    device: &Device,
) -> (M, M) {
    let run = |module, steps| sgd_steps(module, steps, shapes, &forward, &grad_of, device);
    let (straight, out_straight, grad_straight) = run(start(), (0, n + m));
    let (first, _, _) = run(start(), (0, n));
    let (resumed, out_resumed, grad_resumed) = run(save_load(&first), (n, m));
    for i in 0..m as usize {
        let step = n as usize + i;
        assert_bits_eq(
            &format!("output of step {step}"),
            &out_straight[step],
            &out_resumed[i],
        );
        assert_bits_eq(
            &format!("gradient of step {step}"),
            &grad_straight[step],
            &grad_resumed[i],
        );
    }
    assert!(
        state_bytes(&straight) == state_bytes(&resumed),
        "state after resuming differs from the uninterrupted run's"
    );
    (straight, resumed)
}

/// Saves through `save(path)` (a file in a fresh temporary folder for
/// `name`, written with burn's `Module::save_file`) and returns
/// `load(path)`: a checkpoint round trip through the file system.
pub fn through_checkpoint<R>(
    name: &str,
    save: impl FnOnce(PathBuf),
    load: impl FnOnce(PathBuf) -> R,
) -> R {
    let dir = std::env::temp_dir().join(format!(
        "bnorm-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.bpk"));
    save(path.clone());
    let loaded = load(path);
    std::fs::remove_dir_all(&dir).ok();
    loaded
}

/// Every state tensor of `module` (parameters, running statistics,
/// counters, a CBN's whole history), as the bytes of its record.
pub fn state_bytes<M: Module>(module: &M) -> Vec<u8> {
    module.clone().into_record().into_bytes().unwrap().to_vec()
}
