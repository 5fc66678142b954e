//! Loading the reference implementations' PyTorch checkpoints
//! (`torch.save(model.state_dict())`, `.pt`) into this crate's modules,
//! through burn's own PyTorch reader (`burn-store`).
//!
//! - ludvb/batchrenorm `BatchRenorm1d/2d/3d`: `weight`, `bias`,
//!   `running_mean`, `running_std` (a standard deviation; the reference
//!   normalizes with `(x - mean) / std` in eval, as [`BatchRenorm`] does),
//!   `num_batches_tracked` (the step counter). Trained with `eps = 1e-3`
//!   added to the std: use [`EpsPlacement::OnStd`] to keep training as the
//!   reference would.
//! - Howal/Cross-iterationBatchNorm `CBatchNorm2d` after a conv:
//!   `conv.weight` and `norm.weight`, `norm.bias`, `norm.running_mean`,
//!   `norm.running_var` (unbiased); eval normalizes with
//!   `(y - mean) / (sqrt(var) + eps)`, `eps = 1e-5` (or `sqrt(var + eps)`
//!   with `out_p`): pass the matching eps placement. The reference keeps
//!   its history outside the state dict, so the imported CBN starts with an
//!   empty window.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Tensor, TensorData};
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch_reader::{DType, Tensor as StoredTensor};

#[allow(unused_imports)]
use crate::EpsPlacement;
use crate::{
    AveragedState, BatchRenorm, BatchRenormConfig, Conv2dCbn, Conv2dCbnConfig, HostCounter,
};

/// Why a checkpoint could not be imported.
#[derive(Debug)]
pub enum ImportError {
    /// The file could not be read as a PyTorch checkpoint.
    Read(String),
    /// A key the module needs is not in the state dict.
    MissingKey { key: String, available: Vec<String> },
    /// A tensor has another shape than the module needs.
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Read(e) => write!(f, "could not read the PyTorch checkpoint: {e}"),
            ImportError::MissingKey { key, available } => {
                write!(
                    f,
                    "the checkpoint has no `{key}` (keys: {})",
                    available.join(", ")
                )
            }
            ImportError::Shape {
                key,
                expected,
                found,
            } => {
                write!(
                    f,
                    "`{key}` has shape {found:?} in the checkpoint, the module needs {expected:?}"
                )
            }
        }
    }
}

impl std::error::Error for ImportError {}

/// The values of a stored tensor as float32 (PyTorch writes little-endian
/// data; float64 and integer counters are converted).
fn float_values(key: &str, tensor: &StoredTensor) -> Result<Vec<f32>, ImportError> {
    let bytes = tensor
        .read()
        .map_err(|e| ImportError::Read(format!("{key}: {e}")))?;
    let values = match tensor.dtype() {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        DType::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        other => {
            return Err(ImportError::Read(format!(
                "{key}: dtype {other:?} is not supported (float32, float64, int32, int64 are)"
            )))
        }
    };
    Ok(values)
}

/// A PyTorch `state_dict` read with burn-store.
pub struct StateDict {
    tensors: HashMap<String, StoredTensor>,
}

impl StateDict {
    /// Reads a `.pt` / `.pth` file (zip or legacy format).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImportError> {
        let path = path.as_ref();
        let reader = PytorchReader::new(path)
            .map_err(|e| ImportError::Read(format!("{}: {e}", path.display())))?;
        Ok(StateDict {
            tensors: reader.into_tensors(),
        })
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.tensors.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The values of `key` as float32, checked against `shape`.
    pub fn values(&self, key: &str, shape: &[usize]) -> Result<TensorData, ImportError> {
        let snapshot = self
            .tensors
            .get(key)
            .ok_or_else(|| ImportError::MissingKey {
                key: key.to_string(),
                available: self.keys(),
            })?;
        let found: Vec<usize> = snapshot.shape().to_vec();
        let n: usize = shape.iter().product();
        // PyTorch stores scalars with shape []; accept them for one-element shapes.
        let scalar_ok = found.is_empty() && n == 1;
        if found != shape && !scalar_ok {
            return Err(ImportError::Shape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        Ok(TensorData::new(
            float_values(key, snapshot)?,
            shape.to_vec(),
        ))
    }

    /// `key` as a tensor of shape `shape` on `device`.
    pub fn tensor<const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, ImportError> {
        Ok(Tensor::from_data(self.values(key, &shape)?, device))
    }

    /// A [`BatchRenorm`] from ludvb/batchrenorm keys under `prefix` (e.g.
    /// `"norm."`, or `""` for a bare layer), with the other options from
    /// `config` (its `num_features` must match the checkpoint).
    pub fn batch_renorm(
        &self,
        prefix: &str,
        config: &BatchRenormConfig,
        device: &Device,
    ) -> Result<BatchRenorm, ImportError> {
        let c = [config.num_features];
        let mut layer = config.init(device);
        if config.affine {
            layer.gamma = Some(Param::from_tensor(self.tensor(
                &format!("{prefix}weight"),
                c,
                device,
            )?));
            layer.beta = Some(Param::from_tensor(self.tensor(
                &format!("{prefix}bias"),
                c,
                device,
            )?));
        }
        layer.running_mean =
            AveragedState::new(self.tensor(&format!("{prefix}running_mean"), c, device)?);
        layer.running_std =
            AveragedState::new(self.tensor(&format!("{prefix}running_std"), c, device)?);
        layer.steps = HostCounter::from_tensor(self.tensor(
            &format!("{prefix}num_batches_tracked"),
            [1],
            device,
        )?);
        Ok(layer)
    }

    /// The weight (and bias, if `config` has one) of a burn `Conv2d` from
    /// `{prefix}weight` / `{prefix}bias`.
    pub fn conv2d(
        &self,
        prefix: &str,
        config: &Conv2dConfig,
        device: &Device,
    ) -> Result<burn::nn::conv::Conv2d, ImportError> {
        let mut conv = config.init(device);
        let dims = conv.weight.dims();
        conv.weight = Param::from_tensor(self.tensor(&format!("{prefix}weight"), dims, device)?);
        if config.bias {
            conv.bias = Some(Param::from_tensor(self.tensor(
                &format!("{prefix}bias"),
                [dims[0]],
                device,
            )?));
        }
        Ok(conv)
    }

    /// A [`Conv2dCbn`] from Howal's `CBatchNorm2d` after a conv: the conv
    /// under `conv_prefix`, the norm under `norm_prefix`. The architecture
    /// and CBN options come from `config` (pass the reference's eps and eps
    /// placement to reproduce it).
    pub fn conv2d_cbn(
        &self,
        conv_prefix: &str,
        norm_prefix: &str,
        config: &Conv2dCbnConfig,
        device: &Device,
    ) -> Result<Conv2dCbn, ImportError> {
        let mut block = config.init(device);
        let dims = block.conv.weight.dims();
        block.conv.weight =
            Param::from_tensor(self.tensor(&format!("{conv_prefix}weight"), dims, device)?);
        if config.bias {
            block.conv.bias = Some(Param::from_tensor(self.tensor(
                &format!("{conv_prefix}bias"),
                [dims[0]],
                device,
            )?));
        }
        let c = [dims[0]];
        if config.norm.affine {
            block.norm.gamma = Some(Param::from_tensor(self.tensor(
                &format!("{norm_prefix}weight"),
                c,
                device,
            )?));
            block.norm.beta = Some(Param::from_tensor(self.tensor(
                &format!("{norm_prefix}bias"),
                c,
                device,
            )?));
        }
        block.norm.running_mean =
            AveragedState::new(self.tensor(&format!("{norm_prefix}running_mean"), c, device)?);
        block.norm.running_var =
            AveragedState::new(self.tensor(&format!("{norm_prefix}running_var"), c, device)?);
        Ok(block)
    }
}
