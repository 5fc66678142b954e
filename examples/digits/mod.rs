//! The UCI optical digits (1797 8x8 images, CC BY 4.0, shipped in `data/`)
//! and the small CNN the examples train on them.
#![allow(dead_code)]

pub mod idx;
pub mod model;
pub mod report;
pub mod train;

use std::io::Read;
use std::path::Path;

use burn::tensor::Device;

/// The backends the examples train on, by name (`--device`).
pub const DEVICE_NAMES: &str = "flex, ndarray (CPU), wgpu (with `--features wgpu`)";

/// The autodiff device called `name` (see [`DEVICE_NAMES`]), or `None`.
pub fn training_device(name: &str) -> Option<Device> {
    let device = match name {
        "flex" => Device::flex(),
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => bnorm::wgpu::device_or_explain(),
        _ => return None,
    };
    Some(device.autodiff())
}

/// Grayscale images (`[1, rows, cols]` each, row-major, values in
/// `[0, 1]`) and their labels 0..=9.
#[derive(Debug, Clone)]
pub struct Digits {
    pub rows: usize,
    pub cols: usize,
    pub images: Vec<Vec<f32>>,
    pub labels: Vec<u8>,
}

/// Deterministic SplitMix64 generator: the examples own their randomness so
/// a seed means the same run on every machine.
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

impl Digits {
    /// Reads the gzip-compressed CSV: 64 integers in 0..=16, then the label.
    pub fn load_csv_gz(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: not a gzip-compressed CSV: {e}", path.display()))?;
        let mut digits = Digits {
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
    pub fn split(self, seed: u64) -> (Digits, Digits) {
        let test_len = 360.min(self.len() / 2);
        self.split_with_test_len(seed, test_len)
    }

    /// Permute with `seed`, hold out the last `test_len` samples.
    pub fn split_with_test_len(self, seed: u64, test_len: usize) -> (Digits, Digits) {
        let mut order: Vec<usize> = (0..self.labels.len()).collect();
        SplitMix64(seed).shuffle(&mut order);
        let cut = order.len() - test_len;
        (self.subset(&order[..cut]), self.subset(&order[cut..]))
    }

    /// The samples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Digits {
        Digits {
            rows: self.rows,
            cols: self.cols,
            images: idx.iter().map(|&i| self.images[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// From IDX files (see [`idx::load_idx`]).
    pub fn load_idx(images: &Path, labels: &Path) -> Result<Self, String> {
        let data = idx::load_idx(images, labels)?;
        Ok(Digits {
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
