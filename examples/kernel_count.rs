//! GPU kernels launched per training step (forward + backward), per layer,
//! with burn's default fusion: a count, not a time — or, with
//! `BNORM_KERNEL_TIMES=1`, also each kernel's time on the device.
//!
//! ```sh
//! cargo run --features wgpu --example kernel_count -- [NxCxHxW]   # default 1x8x8x8
//! BNORM_KERNEL_TIMES=1 cargo run --release --features cuda --example kernel_count -- 1x32x128x128
//! ```
//!
//! At the sizes small-batch training runs, a GPU step is bound by kernel
//! launches more than by arithmetic, so the count is what decides a
//! layer's GPU cost next to burn's own; it needs no GPU to read (lavapipe,
//! a CPU Vulkan driver, launches the same kernels) and, unlike a time, is
//! the same on every run that makes the same autotune picks (cubecl's cache
//! in `target/autotune`: cleared, lavapipe's picks moved the counts by up
//! to 5). burn-cuda shares burn-cubecl's kernels and
//! burn-fusion's decisions with burn-wgpu, so its counts should be close;
//! the matmul and convolution kernels autotune picks may differ. With
//! `--features cuda` it runs on CUDA device 0 (`tools/gpu-pack-bench.sh`
//! packs it for a GPU machine), else on burn-wgpu's default device.
//!
//! It sets cubecl's profiling logger (on top of `cubecl.toml`, whose kernel
//! cache it keeps) to list every launch in a temporary file (before the
//! device starts), fills each layer's state with 12 steps (autotune runs
//! its candidates there), then counts the launches of 10 more, and breaks
//! the count down by kernel for Conv2d + BatchNorm and each Conv2dCbn
//! variant (window 1, window 8, `rho = 0`, constant history, `Q` in 16
//! bands of output rows).
//! `BNORM_KERNEL_TIMES=1` switches the logger to cubecl's `basic`
//! profiling: each launch is then timed on the device (events on CUDA) and
//! waited for, so the steps run slower than in training, but the sum of
//! kernel times says how much of a step is the kernels' own work and which
//! kernels it is — on a launch-bound step, the rest of the wall time is
//! launch and host overhead. (On lavapipe the times are the CPU driver's,
//! about 80 µs a kernel whatever it does: only the format is checked there.)
//! `BNORM_KERNEL_SEQUENCE="Conv2dCbn, window 8|Conv2dCbn, window 1"` lists
//! the named layers' launches of one step in order, which shows the
//! forward and backward passes and where each operation's kernels fall.

// The benches' training step (forward, backward, input gradient read back)
// and shape names.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[path = "../benches/common/mod.rs"]
mod bench_common;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn main() {
    gpu::main();
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn main() {
    eprintln!("kernel_count counts GPU kernels: run it with --features wgpu or --features cuda");
    std::process::exit(2);
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod gpu {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use bnorm::{BatchRenormConfig, Conv2dCbnConfig, CrossIterBatchNormConfig};
    use burn::backend::Autodiff;
    use burn::cubecl::config::{profiling::ProfilingLogLevel, CubeClRuntimeConfig, RuntimeConfig};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    use burn::tensor::{Distribution, Tensor};

    #[cfg(feature = "cuda")]
    type Gpu = burn::backend::Cuda;
    #[cfg(not(feature = "cuda"))]
    type Gpu = burn::backend::Wgpu;
    type B = Autodiff<Gpu>;
    /// A layer's label and its training step.
    type LabeledStep<'a> = (&'a str, &'a dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>);

    #[cfg(feature = "cuda")]
    fn device() -> burn::tensor::Device<Gpu> {
        bnorm::cuda::device_or_explain(0)
    }
    #[cfg(not(feature = "cuda"))]
    fn device() -> burn::tensor::Device<Gpu> {
        bnorm::wgpu::device_or_explain()
    }

    const WARM_UP_STEPS: usize = 12;
    const COUNTED_STEPS: usize = 10;

    pub fn main() {
        let shape = std::env::args()
            .nth(1)
            .map_or([1, 8, 8, 8], |name| super::bench_common::parse_shape(&name));
        let timed = std::env::var("BNORM_KERNEL_TIMES").is_ok_and(|v| v == "1");
        let log = std::env::temp_dir().join(format!("bnorm-kernels-{}.log", std::process::id()));
        // cubecl.toml's settings (the kernel cache under target/) plus the logger.
        let mut config = CubeClRuntimeConfig::from_current_dir();
        config.profiling.logger.level = if timed {
            ProfilingLogLevel::Basic
        } else {
            ProfilingLogLevel::Minimal
        };
        config.profiling.logger.file = Some(log.clone());
        config.profiling.logger.append = false;
        CubeClRuntimeConfig::set(config);

        let device = device();
        let channels = shape[1];
        let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let conv = Conv2dConfig::new([channels, channels], [3, 3])
            .with_padding(padding.clone())
            .with_bias(false)
            .init::<B>(&device);
        let batch_norm = BatchNormConfig::new(channels).init::<B>(&device);
        let batch_renorm = BatchRenormConfig::new(channels).init::<B>(&device);
        let cbn_with = |norm: CrossIterBatchNormConfig| {
            Conv2dCbnConfig::new([channels, channels], [3, 3])
                .with_padding(padding.clone())
                .with_bias(false)
                .with_norm(norm)
                .init::<B>(&device)
        };
        let window = |k: usize| CrossIterBatchNormConfig::new(0).with_window(k);
        let cbn_k1 = cbn_with(window(1));
        let cbn = cbn_with(window(8));
        let cbn_rho0 = cbn_with(window(8).with_rho(0.0));
        let cbn_constant = cbn_with(window(8).with_history_gradient(false));
        let mut cbn_banded = cbn_with(window(8));
        cbn_banded.jacobian_bands = 16;

        let mut counter = LaunchLog::new(log);
        let backend = if cfg!(feature = "cuda") {
            "burn-cuda"
        } else {
            "burn-wgpu"
        };
        println!(
        "Kernels per training step (forward + backward), {backend} with fusion, input {shape:?}"
    );
        if timed {
            println!("(kernel time: the sum of the device times of a step's kernels)");
            println!("| layer | kernels | kernel time (µs) |");
            println!("|---|---|---|");
        } else {
            println!("| layer | kernels |");
            println!("|---|---|");
        }
        let mut breakdowns = Vec::new();
        // `BNORM_KERNEL_SEQUENCE="<layer>|<layer>..."`: those layers'
        // launches of one step, in order, after the tables.
        let sequence = std::env::var("BNORM_KERNEL_SEQUENCE").unwrap_or_default();
        let sequence: Vec<&str> = sequence.split('|').collect();
        let mut sequences = Vec::new();
        let layers: [LabeledStep; 8] = [
            ("BatchNorm", &|x| batch_norm.forward(x)),
            ("BatchRenorm", &|x| batch_renorm.forward(x)),
            ("Conv2d + BatchNorm", &|x| {
                batch_norm.forward(conv.forward(x))
            }),
            ("Conv2dCbn, window 1", &|x| cbn_k1.forward(x)),
            ("Conv2dCbn, window 8", &|x| cbn.forward(x)),
            ("Conv2dCbn, window 8, rho = 0", &|x| cbn_rho0.forward(x)),
            ("Conv2dCbn, window 8, constant history", &|x| {
                cbn_constant.forward(x)
            }),
            ("Conv2dCbn, window 8, Q in 16 bands", &|x| {
                cbn_banded.forward(x)
            }),
        ];
        for (label, forward) in layers {
            for _ in 0..WARM_UP_STEPS {
                super::bench_common::train_step(&x, forward);
            }
            counter.mark();
            for _ in 0..COUNTED_STEPS {
                super::bench_common::train_step(&x, forward);
            }
            let launches = counter.since_mark();
            let per_step = |n: f64| n / COUNTED_STEPS as f64;
            if timed {
                let micros: f64 = launches.iter().map(|l| l.micros.unwrap_or(0.0)).sum();
                println!(
                    "| {label} | {} | {:.1} |",
                    per_step(launches.len() as f64),
                    per_step(micros)
                );
            } else {
                println!("| {label} | {} |", per_step(launches.len() as f64));
            }
            // Conv2d + BatchNorm and every Conv2dCbn variant: the
            // differences between columns split the window's kernels into
            // its parts (window 8 - window 1: the window; - rho = 0: the
            // compensation; - constant history: the backward through it).
            if label.starts_with("Conv2d") {
                breakdowns.push((label, by_kernel(&launches)));
            }
            if sequence.contains(&label) {
                sequences.push((
                    label,
                    launches[launches.len() - launches.len() / COUNTED_STEPS..].to_vec(),
                ));
            }
        }
        println!(
            "\nBy kernel, per step{}:",
            if timed { " (launches, µs)" } else { "" }
        );
        let kernels: std::collections::BTreeSet<&String> =
            breakdowns.iter().flat_map(|(_, b)| b.keys()).collect();
        let row = |cells: Vec<String>| println!("| {} |", cells.join(" | "));
        row(std::iter::once("kernel".to_string())
            .chain(breakdowns.iter().map(|(label, _)| label.to_string()))
            .collect());
        row(vec!["---".to_string(); breakdowns.len() + 1]);
        for kernel in kernels {
            let cell = |b: &BTreeMap<String, KernelTotal>| {
                let total = b.get(kernel).copied().unwrap_or_default();
                let launches = total.launches as f64 / COUNTED_STEPS as f64;
                if timed {
                    format!("{launches}, {:.1}", total.micros / COUNTED_STEPS as f64)
                } else {
                    format!("{launches}")
                }
            };
            row(std::iter::once(kernel.to_string())
                .chain(breakdowns.iter().map(|(_, b)| cell(b)))
                .collect());
        }
        for (label, launches) in sequences {
            println!("\nOne step of {label}, in order:");
            for (i, launch) in launches.iter().enumerate() {
                println!("{i:4} {}", launch.name);
            }
        }
        std::fs::remove_file(counter.path).ok();
    }

    /// One logged launch: the kernel's name and, when timed, its device time.
    #[derive(Clone)]
    struct Launch {
        name: String,
        micros: Option<f64>,
    }

    #[derive(Debug, Default, Clone, Copy)]
    struct KernelTotal {
        launches: usize,
        micros: f64,
    }

    /// Launches and time per kernel: the name up to its first type argument
    /// (the operation for the unfused binary kernels).
    fn by_kernel(launches: &[Launch]) -> BTreeMap<String, KernelTotal> {
        let mut totals = BTreeMap::<String, KernelTotal>::new();
        for launch in launches {
            let parts: Vec<&str> = launch.name.split(" | ").collect();
            let name = match parts[0] {
                "KernelBinop" | "KernelScalarBinop" if parts.len() > 1 => {
                    format!("{} {}", parts[0], parts[1])
                }
                other => other.to_string(),
            };
            let total = totals.entry(name).or_default();
            total.launches += 1;
            total.micros += launch.micros.unwrap_or(0.0);
        }
        totals
    }

    /// A launch from one line of cubecl's profiling log: `Executing <kernel>`
    /// (`minimal`) or `| <duration> | <kernel>` (`basic`, the duration in
    /// `Debug` form, e.g. `12.5µs`). Other lines (the summary tables cubecl
    /// writes at each sync) are not launches.
    fn parse_launch(line: &str) -> Option<Launch> {
        if let Some(name) = line.strip_prefix("Executing ") {
            return Some(Launch {
                name: name.to_string(),
                micros: None,
            });
        }
        let (duration, name) = line.strip_prefix("| ")?.split_once(" | ")?;
        Some(Launch {
            name: name.to_string(),
            micros: Some(parse_micros(duration.trim())?),
        })
    }

    /// A `Duration`'s `Debug` text (`850ns`, `12.5µs`, `1.2ms`, `1.5s`) in µs.
    fn parse_micros(text: &str) -> Option<f64> {
        let units = [("ns", 1e-3), ("µs", 1.0), ("ms", 1e3), ("s", 1e6)];
        units.iter().find_map(|(unit, scale)| {
            let value: f64 = text.strip_suffix(unit)?.parse().ok()?;
            Some(value * scale)
        })
    }

    /// cubecl's profiling log, written by a logger task after each launch, so
    /// reads wait until it stops growing.
    struct LaunchLog {
        path: PathBuf,
        mark: usize,
    }

    impl LaunchLog {
        fn new(path: PathBuf) -> Self {
            Self { path, mark: 0 }
        }

        fn mark(&mut self) {
            self.mark = settled_lines(&self.path).len();
        }

        fn since_mark(&mut self) -> Vec<Launch> {
            let lines = settled_lines(&self.path);
            let launches = lines[self.mark..]
                .iter()
                .filter_map(|l| parse_launch(l))
                .collect();
            self.mark = lines.len();
            launches
        }
    }

    /// The file's lines once their count has not changed for 300 ms.
    fn settled_lines(path: &Path) -> Vec<String> {
        let read = || {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let mut lines = read();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let again = read();
            if again.len() == lines.len() {
                return again;
            }
            lines = again;
        }
    }
}
