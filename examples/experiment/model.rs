//! The small CNN of the experiment's protocol: three 3x3 conv blocks (16, 32,
//! 64 channels, padding 1, no conv bias), each followed by the normalization
//! and ReLU, a 2x2 max-pool after the second, global average pool, linear to
//! 10 classes.

use bnorm::{BatchRenorm, BatchRenormConfig, Conv2dCbn, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::train::ReplayGradient;

/// CBN window `k` in the demo: the current iteration and 7 earlier ones.
pub const CBN_WINDOW: usize = 8;
/// CBN burn-in in training steps: plain BatchNorm statistics for the first 100
/// steps, while the weights move fastest and the Taylor step is least
/// accurate.
pub const CBN_BURN_IN: usize = 100;

/// BatchRenorm's momentum for a run of `total_steps`: the running
/// statistics average over about `1 / momentum` steps. The paper's 0.01
/// (100 steps) is a sliver of its 40k-step schedule; in a 264-step run
/// (batch 32, 6 epochs) it would leave 7% of the initial values in the
/// running statistics at the end, and `r`, `d` would pull towards stale
/// ones (see docs/experiment.md for the measured effect). So the
/// averaging spans at most 1/20 of the run:
/// `max(0.01, 20 / total_steps)`, which leaves batch sizes 1, 2 and 4 at 0.01.
pub fn brn_momentum(total_steps: usize) -> f64 {
    (20.0 / total_steps.max(1) as f64).clamp(0.01, 1.0)
}

/// Which normalization follows each conv.
// The variants are named after the layers (`BatchNorm`, `GroupNorm`).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Norm {
    /// burn's BatchNorm.
    #[value(name = "bn")]
    BatchNorm,
    /// BatchRenorm.
    #[value(name = "brn")]
    BatchRenorm,
    /// burn's GroupNorm, 4 groups.
    #[value(name = "gn")]
    GroupNorm,
    /// Conv2dCbn with the library defaults (gradient through the history).
    #[value(name = "cbn")]
    CrossIter,
    /// Conv2dCbn with the reference's choices (history terms constant).
    #[value(name = "cbn-ref")]
    CrossIterReference,
}

impl Norm {
    /// A short tag for progress lines: its `--norms` name.
    pub fn short(self) -> String {
        super::flag_name(self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Norm::BatchNorm => "BatchNorm",
            Norm::BatchRenorm => "BatchRenorm",
            Norm::GroupNorm => "GroupNorm(4)",
            Norm::CrossIter => "CBN",
            Norm::CrossIterReference => "CBN (reference)",
        }
    }
}

/// The normalization after a plain conv.
// Three blocks a network, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Normalization {
    BatchNorm(BatchNorm),
    BatchRenorm(BatchRenorm),
    GroupNorm(GroupNorm),
}

impl Normalization {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Normalization::BatchNorm(norm) => norm.forward(x),
            Normalization::BatchRenorm(norm) => norm.forward(x),
            Normalization::GroupNorm(norm) => norm.forward(x),
        }
    }
}

/// A conv and its normalization.
#[derive(Module, Debug)]
pub struct ConvNorm {
    conv: Conv2d,
    norm: Normalization,
}

/// A conv block: a conv followed by a normalization, or a `Conv2dCbn`
/// (CBN comes fused with its conv).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Block {
    Plain(ConvNorm),
    CrossIter(Conv2dCbn),
}

impl Block {
    fn new(
        norm: Norm,
        channels: [usize; 2],
        total_steps: usize,
        cbn_burn_in: usize,
        device: &Device,
    ) -> Self {
        let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
        let c = channels[1];
        let normalization = match norm {
            Norm::CrossIter | Norm::CrossIterReference => {
                let mut options = CrossIterBatchNormConfig::new(c)
                    .with_window(CBN_WINDOW)
                    .with_burn_in(cbn_burn_in);
                if norm == Norm::CrossIterReference {
                    options = options.reference();
                }
                let cbn = Conv2dCbnConfig::new(channels, [3, 3])
                    .with_padding(padding)
                    .with_bias(false)
                    .with_norm(options)
                    .init(device);
                return Block::CrossIter(cbn);
            }
            Norm::BatchNorm => Normalization::BatchNorm(BatchNormConfig::new(c).init(device)),
            Norm::BatchRenorm => Normalization::BatchRenorm(
                BatchRenormConfig::new(c)
                    .with_momentum(brn_momentum(total_steps))
                    .with_steps_compressed_to(total_steps)
                    .init(device),
            ),
            Norm::GroupNorm => Normalization::GroupNorm(GroupNormConfig::new(4, c).init(device)),
        };
        let conv = Conv2dConfig::new(channels, [3, 3])
            .with_padding(padding)
            .with_bias(false)
            .init(device);
        Block::Plain(ConvNorm {
            conv,
            norm: normalization,
        })
    }

    /// The training steps its normalization counted (none for burn's
    /// layers, which count none).
    fn steps(&self) -> Option<usize> {
        match self {
            Block::Plain(ConvNorm {
                norm: Normalization::BatchRenorm(norm),
                ..
            }) => Some(norm.steps()),
            Block::Plain(_) => None,
            Block::CrossIter(cbn) => Some(cbn.norm.steps()),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = match self {
            Block::Plain(ConvNorm { conv, norm }) => norm.forward(conv.forward(x)),
            Block::CrossIter(cbn) => cbn.forward(x),
        };
        relu(y)
    }

    /// [`forward`](Self::forward) on `trained` rows followed by replayed
    /// ones, the replayed rows' gradient cut where `gradient` says (see
    /// [`Replay`](super::train::Replay)). burn's BatchNorm only.
    fn forward_replaying(
        &self,
        x: Tensor<4>,
        trained: usize,
        gradient: ReplayGradient,
    ) -> Tensor<4> {
        let Block::Plain(ConvNorm {
            conv,
            norm: Normalization::BatchNorm(bn),
        }) = self
        else {
            panic!("the replay diagnostic is for burn's BatchNorm");
        };
        let n = x.dims()[0];
        let x = match gradient {
            // The block's input is a constant for the replayed rows.
            ReplayGradient::Layer => Tensor::cat(
                vec![x.clone().slice(0..trained), x.slice(trained..n).detach()],
                0,
            ),
            ReplayGradient::All | ReplayGradient::Affine => x,
        };
        let y = bn.forward(conv.forward(x));
        let y = match gradient {
            // The replayed rows' normalized values are constants, their
            // scale and shift not: `gamma * stop(x_hat) + beta`.
            ReplayGradient::Affine => {
                let c = y.dims()[1];
                let gamma = bn.gamma.val().reshape([1, c, 1, 1]);
                let beta = bn.beta.val().reshape([1, c, 1, 1]);
                let replayed = y.clone().slice(trained..n);
                let normalized = replayed
                    .sub(beta.clone().detach())
                    .div(gamma.clone().detach())
                    .detach();
                let replayed = normalized.mul(gamma).add(beta);
                Tensor::cat(vec![y.slice(0..trained), replayed], 0)
            }
            ReplayGradient::All | ReplayGradient::Layer => y,
        };
        relu(y)
    }
}

#[derive(Module, Debug)]
pub struct SmallCnn {
    blocks: Vec<Block>,
    pool: MaxPool2d,
    head: Linear,
}

impl SmallCnn {
    /// `total_steps` sizes schedules that depend on the run length (BRN's).
    pub fn new(norm: Norm, total_steps: usize, device: &Device) -> Self {
        Self::with_burn_in(norm, total_steps, CBN_BURN_IN, device)
    }

    /// As [`new`](Self::new), with CBN's burn-in in training steps.
    pub fn with_burn_in(
        norm: Norm,
        total_steps: usize,
        cbn_burn_in: usize,
        device: &Device,
    ) -> Self {
        let block = |channels| Block::new(norm, channels, total_steps, cbn_burn_in, device);
        SmallCnn {
            blocks: vec![block([1, 16]), block([16, 32]), block([32, 64])],
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            head: LinearConfig::new(64, 10).init(device),
        }
    }

    /// The training steps each block's normalization counted (empty for
    /// burn's layers).
    pub fn norm_steps(&self) -> Vec<usize> {
        self.blocks.iter().filter_map(Block::steps).collect()
    }

    /// `[N, 1, H, W]` images to `[N, 10]` logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_blocks(x, |block, x| block.forward(x))
    }

    /// [`forward`](Self::forward) on `trained` rows followed by replayed
    /// ones (see [`Replay`](super::train::Replay); burn's BatchNorm only).
    ///
    /// # Panics
    ///
    /// If the normalization is not burn's BatchNorm.
    pub fn forward_replaying(
        &self,
        x: Tensor<4>,
        trained: usize,
        gradient: ReplayGradient,
    ) -> Tensor<2> {
        self.forward_blocks(x, |block, x| block.forward_replaying(x, trained, gradient))
    }

    fn forward_blocks(
        &self,
        x: Tensor<4>,
        block: impl Fn(&Block, Tensor<4>) -> Tensor<4>,
    ) -> Tensor<2> {
        let x = block(&self.blocks[0], x);
        let x = block(&self.blocks[1], x);
        let x = self.pool.forward(x);
        let x = block(&self.blocks[2], x);
        let [n, c, _, _] = x.dims();
        let x = x.mean_dim(3).mean_dim(2).reshape([n, c]);
        self.head.forward(x)
    }
}
