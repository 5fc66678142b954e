//! Peak memory of one training step, forward and backward (the input
//! gradient included), of each layer next to burn's own: BatchRenorm
//! against `BatchNorm`, `Conv2dCbn` against `Conv2d` + `BatchNorm`, also
//! under burn-autodiff's `BalancedCheckpointing`.
//!
//! ```sh
//! cargo bench --bench step_memory -- [NxCxHxW ...]
//! ```
//!
//! On burn-ndarray every tensor is a host allocation, so a counting global
//! allocator sees the step's memory exactly: the most bytes allocated at
//! once during the step beyond what was allocated before it (the module,
//! its history, the input). Printed in units of the input's own size, so
//! a row reads "the step needs this many input-sized buffers at its peak",
//! and as a ratio to burn's layer; the forward pass's own peak and what it
//! keeps for the backward pass beside it. Default shape: 1x16x64x64
//! (about 10 s on two cores; 1x32x128x128 takes about 3 minutes).

// The benches' training step and shape names.
#[path = "common/mod.rs"]
mod bench_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bnorm::{BatchRenormConfig, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor};

/// The system allocator, counting the bytes it holds and their peak.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let held = HELD.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(held, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            // Counted as both held at once, as a moving realloc may.
            grew(new_size);
            HELD.fetch_sub(layout.size(), Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak bytes of one training step (the benches' `train_step`:
/// forward on `x`, tracked, backward of the output's sum, the input
/// gradient read back) beyond those held before it, in the forward pass
/// and in the whole step, and the bytes held after the forward pass.
fn step_peak(x: &Tensor<4>, forward: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Peaks {
    let before = HELD.load(Relaxed);
    PEAK.store(before, Relaxed);
    let (mut forward_peak, mut kept) = (0, 0);
    bench_common::train_step(x, |x| {
        let y = forward(x);
        forward_peak = PEAK.load(Relaxed) - before;
        kept = HELD.load(Relaxed) - before;
        y
    });
    Peaks {
        step: PEAK.load(Relaxed) - before,
        forward: forward_peak,
        kept,
    }
}

/// Peak bytes of a step (see [`step_peak`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Peaks {
    /// Of the step, forward and backward.
    step: usize,
    /// Of the forward pass.
    forward: usize,
    /// Held when the forward pass has returned: the output and what the
    /// autodiff graph keeps for the backward pass (in a network, what the
    /// layer adds to the memory every later layer's step runs on top of).
    kept: usize,
}

/// `step_peak` of the layer's step after `warm_up` steps (a full window),
/// the largest of two measured steps.
fn measured(x: &Tensor<4>, warm_up: usize, forward: impl Fn(Tensor<4>) -> Tensor<4>) -> Peaks {
    for _ in 0..warm_up {
        step_peak(x, &forward);
    }
    (0..2).map(|_| step_peak(x, &forward)).max().unwrap()
}

/// The rows for one shape on backend `B`: (label, peaks), each candidate
/// after its baseline.
fn layer_rows(shape: [usize; 4], label: &str, device: Device) -> Vec<(String, Peaks)> {
    let channels = shape[1];
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let bn = BatchNormConfig::new(channels).init(&device);
    let brn = BatchRenormConfig::new(channels).init(&device);
    let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let conv = Conv2dConfig::new([channels, channels], [3, 3])
        .with_padding(padding.clone())
        .with_bias(false)
        .init(&device);
    let cbn = |window: usize| {
        Conv2dCbnConfig::new([channels, channels], [3, 3])
            .with_padding(padding.clone())
            .with_bias(false)
            .with_norm(CrossIterBatchNormConfig::new(0).with_window(window))
            .init(&device)
    };
    let (cbn_1, cbn_8) = (cbn(1), cbn(8));
    // Four blocks in a row, as in a network: what each keeps for the
    // backward pass adds up, a forward pass's transient does not.
    let blocks = 4;
    let conv_bns: Vec<_> = (0..blocks)
        .map(|_| (conv.clone(), BatchNormConfig::new(channels).init(&device)))
        .collect();
    let cbns: Vec<_> = (0..blocks).map(|_| cbn(8)).collect();
    let row = |name: &str, bytes| (format!("{name}{label}"), bytes);
    vec![
        row("BatchNorm", measured(&x, 2, |x| bn.forward(x))),
        row("BatchRenorm", measured(&x, 2, |x| brn.forward(x))),
        row(
            "Conv2d + BatchNorm",
            measured(&x, 2, |x| bn.forward(conv.forward(x))),
        ),
        row("Conv2dCbn, window 1", measured(&x, 2, |x| cbn_1.forward(x))),
        row("Conv2dCbn, window 8", measured(&x, 8, |x| cbn_8.forward(x))),
        row(
            "Conv2d + BatchNorm, 4 blocks",
            measured(&x, 2, |x| {
                conv_bns
                    .iter()
                    .fold(x, |x, (conv, bn)| bn.forward(conv.forward(x)))
            }),
        ),
        row(
            "Conv2dCbn, window 8, 4 blocks",
            measured(&x, 8, |x| cbns.iter().fold(x, |x, cbn| cbn.forward(x))),
        ),
    ]
}

fn main() {
    let shapes: Vec<[usize; 4]> = {
        // `cargo bench` passes `--bench` (and criterion's flags) along.
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        let args = if args.is_empty() {
            vec!["1x16x64x64".to_string()]
        } else {
            args
        };
        args.iter()
            .map(|name| bench_common::parse_shape(name))
            .collect()
    };
    println!("Peak memory of one training step (forward + backward), burn-ndarray,");
    println!("in input sizes (N*C*H*W float32 values), and against burn's layer:");
    for shape in shapes {
        let input_bytes = shape.iter().product::<usize>() * size_of::<f32>();
        #[allow(deprecated)]
        let device = Device::ndarray().autodiff();
        let mut rows = layer_rows(shape, "", device.clone());
        rows.extend(layer_rows(
            shape,
            ", gradient checkpointing",
            device.gradient_checkpointing(),
        ));
        println!();
        println!("input {}", bench_common::shape_name(shape));
        println!(
            "| layer | step's peak (MiB) | in input sizes | ratio | forward's peak | kept after forward | ratio |"
        );
        println!("|---|---|---|---|---|---|---|");
        let mut baseline = None;
        for (name, peaks) in rows {
            // Each of burn's layers is the baseline of the rows after it.
            let burns = name.starts_with("BatchNorm") || name.starts_with("Conv2d + BatchNorm");
            if burns {
                baseline = Some(peaks);
            }
            let base = baseline.expect("burn's layer first");
            let ratio = |of: usize, to: usize| match burns {
                true => String::new(),
                false => format!("{:.2}x", of as f64 / to as f64),
            };
            let inputs = |bytes: usize| bytes as f64 / input_bytes as f64;
            println!(
                "| {name} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} |",
                peaks.step as f64 / (1 << 20) as f64,
                inputs(peaks.step),
                ratio(peaks.step, base.step),
                inputs(peaks.forward),
                inputs(peaks.kept),
                ratio(peaks.kept, base.kept),
            );
        }
    }
}
