//! Shared test support: the device cases, fixture loading and tolerant
//! comparison with messages that name what failed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::DispatchDevice;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde::Deserialize;

pub mod blocks;
pub mod device;
pub mod random;
pub mod training;
pub use device::*;

/// A tensor as the reference fixtures store it.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonTensor {
    pub shape: Vec<usize>,
    pub data: Vec<serde_json::Value>,
}

impl JsonTensor {
    pub fn values(&self) -> Vec<f32> {
        self.data
            .iter()
            .map(|v| v.as_f64().expect("numeric tensor") as f32)
            .collect()
    }

    pub fn bools(&self) -> Vec<bool> {
        self.data
            .iter()
            .map(|v| v.as_bool().expect("bool tensor"))
            .collect()
    }

    pub fn tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        assert_eq!(self.shape.len(), D, "fixture tensor rank");
        Tensor::from_data(TensorData::new(self.values(), self.shape.clone()), device)
    }

    pub fn mask(&self, device: &Device) -> Tensor<2, Bool> {
        Tensor::from_data(TensorData::new(self.bools(), self.shape.clone()), device)
    }
}

/// The reference fixture root: `BNORM_REFERENCE_FIXTURES` when set, else
/// `tests/fixtures/reference` under the package directory (read at run time,
/// so packed test binaries find it from their working directory).
pub fn reference_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BNORM_REFERENCE_FIXTURES") {
        return PathBuf::from(dir);
    }
    package_dir().join("tests/fixtures/reference")
}

/// The package directory at run time.
pub fn package_dir() -> PathBuf {
    std::env::var("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// Every `*.json` in `dir`, sorted by name.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read fixture directory {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// Fixture tolerance: about 1e-4 relative with a 1e-5 absolute floor, as the
/// fixtures' README prescribes for float32 reference numbers.
pub const RTOL: f32 = 1e-4;
pub const ATOL: f32 = 1e-5;

/// Compares `actual` with `expected` elementwise: `|a - e| <= atol + rtol * |e|`.
/// The error names `what` (fixture, step, tensor), the worst element and its
/// values.
pub fn check_close(
    what: &str,
    actual: &TensorData,
    expected_shape: &[usize],
    expected: &[f32],
    rtol: f32,
    atol: f32,
) -> Result<(), String> {
    if actual.shape().as_slice() != expected_shape {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            actual.shape(),
            expected_shape
        ));
    }
    let actual: Vec<f32> = actual.try_to_vec::<f32>().expect("float data");
    // By how much |a - e| exceeds the tolerance; NaN (a NaN value) is off.
    let excess = |a: f32, e: f32| (a - e).abs() - (atol + rtol * e.abs());
    let off = |excess: f32| excess > 0.0 || excess.is_nan();
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let excess = excess(a, e);
        if off(excess) && worst.is_none_or(|(_, w)| excess > w || excess.is_nan()) {
            worst = Some((
                i,
                if excess.is_nan() {
                    f32::INFINITY
                } else {
                    excess
                },
            ));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{what}: element {i} is {}, expected {} (rtol {rtol}, atol {atol}; {} of {} elements off)",
            actual[i],
            expected[i],
            actual
                .iter()
                .zip(expected)
                .filter(|&(&a, &e)| off(excess(a, e)))
                .count(),
            actual.len()
        )),
    }
}

/// [`check_close`] against a fixture tensor.
pub fn check_json(
    what: &str,
    actual: &TensorData,
    expected: &JsonTensor,
    rtol: f32,
    atol: f32,
) -> Result<(), String> {
    check_close(
        what,
        actual,
        &expected.shape,
        &expected.values(),
        rtol,
        atol,
    )
}

/// Panics with `what` unless the two tensors are bit-identical.
pub fn assert_bits_eq(what: &str, a: &TensorData, b: &TensorData) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes differ");
    let a: Vec<f32> = a.try_to_vec::<f32>().unwrap();
    let b: Vec<f32> = b.try_to_vec::<f32>().unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: element {i} differs: {x} vs {y}"
        );
    }
}

/// Panics unless every value is finite.
pub fn assert_finite(what: &str, data: &TensorData) {
    let values: Vec<f32> = data.try_to_vec::<f32>().unwrap();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {}", values[i]);
    }
}

/// Runs every fixture through `replay`, collecting failures, and panics at
/// the end with one line per failing fixture (so one broken case does not
/// hide the others). Prints one line per fixture.
pub fn run_fixtures(dir: &Path, device_name: &str, replay: impl Fn(&Path) -> Result<(), String>) {
    let mut failures = Vec::new();
    let files = json_files(dir);
    for file in &files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replay(file)))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                ))
            });
        match outcome {
            Ok(()) => println!("fixture {name} [{device_name}]: ok"),
            Err(e) => {
                println!("fixture {name} [{device_name}]: FAILED: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed on {device_name}:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// Compares a result that went through a matmul or convolution on
/// `device` with `expected`.
///
/// burn-cuda runs float32 matmuls and implicit-GEMM convolutions on tensor
/// cores in TF32 (cubek-matmul's `adjust_dtypes`): each input is rounded to
/// 10 mantissa bits (unit roundoff 2^-11 = 4.9e-4), so a sum of products
/// carries up to ~1e-3 of the magnitude of its *terms*, not of its result.
/// On CUDA such results are compared at 2e-3 relative with an absolute
/// floor of 2e-3 times the tensor's largest magnitude (values that cancel
/// to near zero are judged against the size of what cancelled); the other
/// backends compute in full float32 and are held to the fixtures' 1e-4 /
/// 1e-5. Reductions and elementwise math (BRN, the moments, the
/// compensation) are float32 everywhere and always use [`RTOL`], [`ATOL`].
pub fn check_matmul(
    device: &Device,
    what: &str,
    actual: &TensorData,
    shape: &[usize],
    expected: &[f32],
) -> Result<(), String> {
    if tensor_cores(device) {
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        check_close(
            what,
            actual,
            shape,
            expected,
            TF32_RTOL,
            (TF32_RTOL * scale).max(ATOL),
        )
    } else {
        check_close(what, actual, shape, expected, RTOL, ATOL)
    }
}

/// Relative precision of a TF32 product (see [`check_matmul`]).
pub const TF32_RTOL: f32 = 2e-3;

/// Whether `device`'s float32 matmuls and convolutions run in TF32 (CUDA).
pub fn tensor_cores(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        matches!(
            device.clone().inner().as_dispatch(),
            DispatchDevice::Cube(burn::backend::CubeDevice::Cuda(_))
        )
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

/// Whether `device` runs burn-cubecl's kernels (wgpu): fused, autotuned
/// kernels whose grouping, and so rounding, depends on the surrounding
/// operations (a recomputed activation, a conv output handed in rather than
/// computed in place) and on which kernel autotune has picked so far.
pub fn is_cube(device: &Device) -> bool {
    #[allow(deprecated)]
    let cpu = matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::NdArray(_) | DispatchDevice::Flex(_)
    );
    !cpu
}

/// `actual` equal to `expected` bit for bit on the CPU backends, within
/// [`check_matmul`]'s tolerance on wgpu and CUDA (see [`is_cube`]).
pub fn assert_bits_or_close(
    device: &Device,
    what: &str,
    actual: &TensorData,
    expected: &TensorData,
) {
    if is_cube(device) {
        let values: Vec<f32> = expected.try_to_vec::<f32>().unwrap();
        check_matmul(device, what, actual, expected.shape(), &values).unwrap();
    } else {
        assert_bits_eq(what, actual, expected);
    }
}

/// [`check_matmul`] against a fixture tensor.
pub fn check_json_matmul(
    device: &Device,
    what: &str,
    actual: &TensorData,
    expected: &JsonTensor,
) -> Result<(), String> {
    check_matmul(device, what, actual, &expected.shape, &expected.values())
}

/// Runs `step` 6 times and asserts that every state tensor `state` lists
/// (name, tracked) is out of the autodiff graph after 3 steps and after 6:
/// a state tensor computed from the last step's without `detach` keeps
/// the graph of every step before it, and the graph's bookkeeping then
/// grows with every step (no tensor memory leaks, but each step gets
/// slower).
pub fn assert_state_untracked(
    what: &str,
    mut step: impl FnMut(u64),
    state: impl Fn() -> Vec<(&'static str, bool)>,
) {
    for steps in [0..3, 3..6] {
        steps.for_each(&mut step);
        let tracked: Vec<&str> = state()
            .into_iter()
            .filter(|(_, tracked)| *tracked)
            .map(|(name, _)| name)
            .collect();
        assert!(
            tracked.is_empty(),
            "{what}: state linked to the training graph: {}",
            tracked.join(", ")
        );
    }
}

/// burn's error, as text, for loading the record of `saved` into `target`
/// (which must fail).
pub fn load_error<M: burn::module::Module>(saved: M, target: M) -> String {
    target
        .try_load_record(saved.into_record())
        .expect_err("a record that does not fit the module")
        .to_string()
}

/// `data` copied into memory of its own. Needed for values kept while the
/// device goes on working: on wgpu over lavapipe, burn 0.22's `into_data`
/// can hand back memory that later operations overwrite (a BRN test's
/// stored step outputs changed under it: -1.2055883 read back as
/// -2.0995624 after the step's backward pass).
pub fn owned(data: TensorData) -> TensorData {
    let values: Vec<f32> = data.try_to_vec::<f32>().expect("float data");
    TensorData::new(values, data.shape().clone())
}

/// A float tensor's values on the host.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

/// Runs `f`, which must panic, and returns the panic's message.
pub fn panic_message(f: impl FnOnce()) -> String {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("should panic");
    err.downcast_ref::<String>().cloned().unwrap_or_default()
}

/// Checks closed-form moment Jacobians against autodiff with
/// [`check_matmul`]: `p` `[G, F]` (`d mean / dW`, one row per weight
/// group) and `q` `[C, F]` (`d meansq / dW`) against autodiff's weight
/// gradients of `sum_c a_c mean_c` and `sum_c a_c meansq_c` (`[C, F]`,
/// row `c` being `a_c` times channel `c`'s derivative), `a` `[C]`.
pub fn check_moment_jacobians(
    what: &str,
    (p, q): (Tensor<2>, Tensor<2>),
    a: Tensor<1>,
    (auto_dmu, auto_dnu): (&[f32], &[f32]),
) {
    let device = &p.device();
    let [groups, f] = p.dims();
    let [c] = a.dims();
    let a = a.reshape([c, 1]);
    let p = p
        .reshape([groups, 1, f])
        .expand([groups, c / groups, f])
        .reshape([c, f])
        .mul(a.clone());
    let checks = [
        ("d mean/dW", p, auto_dmu),
        ("d meansq/dW", q.mul(a), auto_dnu),
    ];
    for (name, closed, auto) in checks {
        check_matmul(
            device,
            &format!("{what} {name}"),
            &closed.into_data(),
            &[c, f],
            auto,
        )
        .unwrap();
    }
}

/// burn initializes parameters lazily and a clone of an uninitialized
/// module draws its own values: load the module's own record into it so
/// that clones share its values.
pub fn materialize<M: burn::module::Module>(module: M) -> M {
    let record = module.clone().into_record();
    module.load_record(record)
}
