//! Deterministic test data generated on the host, so every backend sees the
//! same numbers.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Device;
use burn::tensor::{Tensor, TensorData};

/// Uniform values in `[lo, hi)` from a fixed-seed LCG.
pub fn uniform<const D: usize>(
    shape: [usize; D],
    seed: u64,
    lo: f32,
    hi: f32,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// `module` with the weight and bias of every burn `Conv1d`, `Conv2d`,
/// `Conv3d` and `Linear` in it drawn by [`uniform`] from `seed` instead of
/// burn's RNG, in burn's default range `±1/sqrt(fan_in)`. burn's RNG is
/// seeded from OS entropy unless a test seeds it, and tests running in
/// parallel threads share it: a module initialised from it has other
/// weights on every run. Tests that compare against a tolerance take their
/// weights from here, so a failure repeats.
pub fn host_seeded<M: Module>(module: M, seed: u64) -> M {
    module.map(&mut HostSeeded {
        seed,
        path: Vec::new(),
        fan_in: 1,
    })
}

struct HostSeeded {
    seed: u64,
    /// The containers entered: `(field name, container type)`.
    path: Vec<(String, String)>,
    /// The fan-in of the last weight drawn (a layer's bias follows its
    /// weight).
    fan_in: usize,
}

impl ModuleMapper for HostSeeded {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((field, container)) = self.path.last() else {
            return param;
        };
        let layer = container.strip_prefix("Struct:").unwrap_or("");
        let is_linear = layer == "Linear";
        if !(is_linear || matches!(layer, "Conv1d" | "Conv2d" | "Conv3d")) {
            return param;
        }
        let field = field.clone();
        param.map(|tensor| {
            let dims = tensor.dims();
            match field.as_str() {
                // Linear: [d_in, d_out]; convolutions: [C_out, C_in / groups, k...].
                "weight" if is_linear => self.fan_in = dims[0],
                "weight" => self.fan_in = dims[1..].iter().product(),
                "bias" => {}
                _ => return tensor,
            }
            self.seed += 1;
            let bound = 1.0 / (self.fan_in as f32).sqrt();
            let require_grad = tensor.is_require_grad();
            uniform(dims, self.seed, -bound, bound, &tensor.device()).set_require_grad(require_grad)
        })
    }
}
