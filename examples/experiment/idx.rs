//! MNIST-format IDX files: big-endian magic `0x00000803` (unsigned bytes,
//! three dimensions: count, rows, columns) for images, `0x00000801` (one
//! dimension) for labels, plain or gzip-compressed. Pixels are scaled to
//! `[0, 1]`.

use std::io::Read;
use std::path::Path;

/// Images (row-major `[rows, cols]` each, values in `[0, 1]`) and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxData {
    pub rows: usize,
    pub cols: usize,
    pub images: Vec<Vec<f32>>,
    pub labels: Vec<u8>,
}

/// Writes images and labels as IDX files (used by the tests).
pub fn write_idx(images: &Path, labels: &Path, data: &IdxData) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    for word in [
        0x0000_0803u32,
        data.images.len() as u32,
        data.rows as u32,
        data.cols as u32,
    ] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    for image in &data.images {
        bytes.extend(image.iter().map(|&p| (p * 255.0).round() as u8));
    }
    std::fs::write(images, bytes)?;
    let mut bytes = Vec::new();
    for word in [0x0000_0801u32, data.labels.len() as u32] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.extend_from_slice(&data.labels);
    std::fs::write(labels, bytes)
}

/// The file's bytes, gunzipped when it starts with gzip's magic bytes (the
/// shipped Fashion-MNIST files are `.idx.gz`).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut plain)
        .map_err(|e| format!("{}: broken gzip stream: {e}", path.display()))?;
    Ok(plain)
}

fn header(bytes: &[u8], path: &Path, magic: u32, dims: usize) -> Result<Vec<usize>, String> {
    let word = |i: usize| {
        u32::from_be_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    let what = if magic == 0x803 {
        "unsigned-byte images, 3 dimensions"
    } else {
        "unsigned-byte labels, 1 dimension"
    };
    if bytes.len() < 4 {
        return Err(format!(
            "{}: truncated IDX header: {} bytes",
            path.display(),
            bytes.len()
        ));
    }
    if word(0) != magic {
        return Err(format!(
            "{}: IDX magic number {:#010x}, expected {magic:#010x} ({what})",
            path.display(),
            word(0)
        ));
    }
    let need = 4 + 4 * dims;
    if bytes.len() < need {
        return Err(format!(
            "{}: truncated IDX header: {} bytes, expected at least {need}",
            path.display(),
            bytes.len()
        ));
    }
    Ok((1..=dims).map(|i| word(i) as usize).collect())
}

/// Reads an image file and a label file and checks that they agree.
pub fn load_idx(images: &Path, labels: &Path) -> Result<IdxData, String> {
    let image_bytes = read(images)?;
    let dims = header(&image_bytes, images, 0x0000_0803, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    let expected = 16 + count * rows * cols;
    if image_bytes.len() != expected {
        return Err(format!(
            "{}: {} bytes, expected {expected} for {count} images of {rows}x{cols} (truncated or trailing data)",
            images.display(),
            image_bytes.len()
        ));
    }
    let label_bytes = read(labels)?;
    let label_count = header(&label_bytes, labels, 0x0000_0801, 1)?[0];
    if label_bytes.len() != 8 + label_count {
        return Err(format!(
            "{}: {} bytes, expected {} for {label_count} labels (truncated or trailing data)",
            labels.display(),
            label_bytes.len(),
            8 + label_count
        ));
    }
    if label_count != count {
        return Err(format!(
            "{} holds {count} images but {} holds {label_count} labels",
            images.display(),
            labels.display()
        ));
    }
    let label_values: Vec<u8> = label_bytes[8..].to_vec();
    if let Some(bad) = label_values.iter().position(|&l| l > 9) {
        return Err(format!(
            "{}: label {} at index {bad} is not a digit 0..=9",
            labels.display(),
            label_values[bad]
        ));
    }
    let images = image_bytes[16..]
        .chunks(rows * cols)
        .map(|px| px.iter().map(|&p| p as f32 / 255.0).collect())
        .collect();
    Ok(IdxData {
        rows,
        cols,
        images,
        labels: label_values,
    })
}
