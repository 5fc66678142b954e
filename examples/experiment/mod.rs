//! The small-batch experiment's data sets (shipped in `data/`: the UCI
//! optical digits and Fashion-MNIST-12k, or IDX files of the user's own)
//! and the small CNN the examples train on them.
#![allow(dead_code)]

pub mod idx;
pub mod learner;
pub mod model;
pub mod report;
pub mod train;

use std::io::Read;
use std::path::Path;

use burn::tensor::Device;

/// The backends the examples train on, by name (`--device`): flex and
/// ndarray (CPU), wgpu when built with `--features wgpu` and cuda (device
/// 0) with `--features cuda`.
pub const DEVICE_NAMES: &[&str] = &[
    "flex",
    "ndarray",
    #[cfg(feature = "wgpu")]
    "wgpu",
    #[cfg(feature = "cuda")]
    "cuda",
];

/// The autodiff device called `name` (one of [`DEVICE_NAMES`]), or why it
/// cannot be used.
pub fn training_device(name: &str) -> Result<Device, String> {
    let device = match name {
        "flex" => Device::flex(),
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => bnorm::wgpu::device().map_err(|e| e.to_string())?,
        #[cfg(feature = "cuda")]
        "cuda" => bnorm::cuda::device(0).map_err(|e| e.to_string())?,
        _ => {
            return Err(format!(
                "unknown device {name:?} (one of: {})",
                DEVICE_NAMES.join(", ")
            ))
        }
    };
    Ok(device.autodiff())
}

/// `count` autodiff devices for data-parallel replicas: CUDA devices
/// `0..count` for `cuda`, else `count` handles of the one device `name`.
pub fn training_devices(name: &str, count: usize) -> Result<Vec<Device>, String> {
    #[cfg(feature = "cuda")]
    if name == "cuda" {
        return (0..count)
            .map(|index| {
                bnorm::cuda::device(index)
                    .map(|device| device.autodiff())
                    .map_err(|e| e.to_string())
            })
            .collect();
    }
    Ok(vec![training_device(name)?; count])
}

/// The data sets shipped in `data/` (each with its attribution in
/// `data/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataSet {
    /// UCI optical digits (CC BY 4.0): 1797 8x8 images, 1437 train / 360
    /// test after a fixed-seed permutation.
    Digits,
    /// Fashion-MNIST-12k (MIT): 10,000 train / 2,000 test 28x28 images of
    /// 10 clothing classes.
    Fashion,
}

/// The name clap parses `value` from (`--norms bn`, `--sampling paired`,
/// `--data fashion`), so each value is spelled in one place.
pub fn flag_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("every value has a name")
        .get_name()
        .to_string()
}

impl DataSet {
    /// Its `--data` name.
    pub fn name(self) -> String {
        flag_name(self)
    }

    /// The data set's name in titles.
    pub fn title(self) -> &'static str {
        match self {
            DataSet::Digits => "UCI digits",
            DataSet::Fashion => "Fashion-MNIST",
        }
    }

    /// Where the data set comes from, for the report.
    pub fn source(self) -> &'static str {
        match self {
            DataSet::Digits => "UCI optical digits (CC BY 4.0)",
            DataSet::Fashion => "Fashion-MNIST-12k (Zalando Research, MIT)",
        }
    }

    /// The protocol's training and test sets.
    pub fn load(self) -> Result<(LabeledImages, LabeledImages), String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        match self {
            DataSet::Digits => {
                Ok(LabeledImages::load_csv_gz(&dir.join("optdigits-1797.csv.gz"))?.split(0))
            }
            DataSet::Fashion => {
                let dir = dir.join("fashion-mnist-12k");
                let set = |name: &str| {
                    LabeledImages::load_idx(
                        &dir.join(format!("{name}-images.idx.gz")),
                        &dir.join(format!("{name}-labels.idx.gz")),
                    )
                };
                Ok((set("train")?, set("test")?))
            }
        }
    }
}

/// Grayscale images (`[1, rows, cols]` each, row-major, values in
/// `[0, 1]`) and their labels 0..=9.
#[derive(Debug, Clone)]
pub struct LabeledImages {
    pub rows: usize,
    pub cols: usize,
    pub images: Vec<Vec<f32>>,
    pub labels: Vec<u8>,
}

/// Deterministic SplitMix64 generator. The examples own their randomness so
/// a seed means the same run on every machine and every version of every
/// dependency (rand's `StdRng` promises neither), and so that
/// `tools/pytorch_protocol.py` replays the exact batch order in a few lines.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

impl LabeledImages {
    /// Reads the gzip-compressed CSV: 64 integers in 0..=16, then the label.
    pub fn load_csv_gz(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: not a gzip-compressed CSV: {e}", path.display()))?;
        let mut digits = LabeledImages {
            rows: 8,
            cols: 8,
            images: Vec::new(),
            labels: Vec::new(),
        };
        for (row, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != 65 {
                return Err(format!(
                    "{} line {}: expected 65 fields, found {}",
                    path.display(),
                    row + 1,
                    fields.len()
                ));
            }
            let mut image = vec![0f32; 64];
            for (pixel, field) in image.iter_mut().zip(&fields[..64]) {
                let v: f32 = field.parse().map_err(|_| {
                    format!("{} line {}: bad pixel {field:?}", path.display(), row + 1)
                })?;
                *pixel = v / 16.0;
            }
            let label: u8 = fields[64]
                .parse()
                .map_err(|_| format!("{} line {}: bad label", path.display(), row + 1))?;
            if !(0..=9).contains(&label) {
                return Err(format!(
                    "{} line {}: label {label} is not a digit",
                    path.display(),
                    row + 1
                ));
            }
            digits.images.push(image);
            digits.labels.push(label);
        }
        Ok(digits)
    }

    /// The protocol's split: permute with `seed`, first 1437 train, last 360 test.
    pub fn split(self, seed: u64) -> (LabeledImages, LabeledImages) {
        let test_len = 360.min(self.len() / 2);
        self.split_with_test_len(seed, test_len)
    }

    /// Permute with `seed`, hold out the last `test_len` samples.
    pub fn split_with_test_len(self, seed: u64, test_len: usize) -> (LabeledImages, LabeledImages) {
        let mut order: Vec<usize> = (0..self.labels.len()).collect();
        SplitMix64(seed).shuffle(&mut order);
        let cut = order.len() - test_len;
        (self.subset(&order[..cut]), self.subset(&order[cut..]))
    }

    /// The samples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> LabeledImages {
        LabeledImages {
            rows: self.rows,
            cols: self.cols,
            images: idx.iter().map(|&i| self.images[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// From IDX files (see [`idx::load_idx`]).
    pub fn load_idx(images: &Path, labels: &Path) -> Result<Self, String> {
        let data = idx::load_idx(images, labels)?;
        Ok(LabeledImages {
            rows: data.rows,
            cols: data.cols,
            images: data.images,
            labels: data.labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
}
