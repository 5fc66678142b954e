//! Checkpoints that cannot be loaded: a missing file, a truncated or
//! corrupted one, another layer's and another shape's each give an error
//! value naming the path and the cause, and the layer they were loaded
//! into is left as it was.

use crate::common;

use bnorm::CheckpointErrorKind::{self, *};
use bnorm::{BatchRenorm, BatchRenormConfig, Conv2dCbn, Conv2dCbnConfig};
use burn::module::Module;
use burn::tensor::Device;
use common::*;
use std::path::{Path, PathBuf};

/// A directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bnorm-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A module's record as bytes: every tensor it saves.
fn values<M: Module>(module: &M) -> Vec<u8> {
    module.clone().into_record().into_bytes().unwrap().to_vec()
}

/// The files a user may hand `load_checkpoint` by mistake, each with what
/// its error must say besides the path.
fn bad_files(dir: &Path, device: &Device) -> Vec<(PathBuf, CheckpointErrorKind, &'static str)> {
    let good = dir.join("good.bpk");
    BatchRenormConfig::new(4)
        .init(device)
        .save_file(&good)
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.bpk");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupted = dir.join("corrupted.bpk");
    let mut flipped = bytes.clone();
    for b in flipped.iter_mut().take(16) {
        *b ^= 0xA5;
    }
    std::fs::write(&corrupted, flipped).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let empty = dir.join("empty.bpk");
    std::fs::write(&empty, []).unwrap();
    let other_layer = dir.join("conv2d-cbn.bpk");
    Conv2dCbnConfig::new([2, 4], [3, 3])
        .init(device)
        .save_file(&other_layer)
        .unwrap();
    let other_shape = dir.join("brn-5.bpk");
    BatchRenormConfig::new(5)
        .init(device)
        .save_file(&other_shape)
        .unwrap();
    vec![
        (dir.join("absent.bpk"), NotFound, "does not exist"),
        (truncated, Truncated, "truncated"),
        (corrupted, NotACheckpoint, "not a burnpack checkpoint"),
        (text, NotACheckpoint, "not a burnpack checkpoint"),
        (empty, Truncated, "truncated or empty"),
        (other_layer, Mismatch, "gamma"),
        (other_shape, Mismatch, "[5]"),
    ]
}

fn brn_checkpoint_errors_name_path_and_cause(device: &Device) {
    let dir = scratch("checkpoint-errors");
    for (path, kind, cause) in bad_files(&dir, device) {
        let layer: BatchRenorm = BatchRenormConfig::new(4).init(device);
        let before = values(&layer);
        let err = layer.clone().load_checkpoint(&path).unwrap_err();
        let message = err.to_string();
        assert_eq!(err.path, path);
        assert_eq!(err.kind, kind, "{message}");
        assert!(
            message.contains(&path.display().to_string()) && message.contains(cause),
            "{message}"
        );
        assert!(
            !message.contains("0.14"),
            "no format-version text: {message}"
        );
        assert_eq!(
            values(&layer),
            before,
            "{}: the layer is untouched",
            path.display()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

device_test!(
    brn_checkpoint_errors,
    brn_checkpoint_errors_name_path_and_cause
);

/// The same files into a `Conv2dCbn`.
fn cbn_checkpoint_errors_name_path_and_cause(device: &Device) {
    let dir = scratch("checkpoint-errors-cbn");
    for (path, kind, _) in bad_files(&dir, device) {
        if path.ends_with("conv2d-cbn.bpk") {
            continue;
        }
        let layer: Conv2dCbn = Conv2dCbnConfig::new([2, 4], [3, 3]).init(device);
        let err = layer.load_checkpoint(&path).unwrap_err();
        let message = err.to_string();
        assert_eq!(err.kind, kind, "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("Conv2dCbn"), "{message}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

device_test!(
    cbn_checkpoint_errors,
    cbn_checkpoint_errors_name_path_and_cause
);
