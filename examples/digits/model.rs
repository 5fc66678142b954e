//! The digits CNN of the project's protocol: three 3x3 conv blocks (16, 32,
//! 64 channels, padding 1, no conv bias), each followed by the normalization
//! and ReLU, a 2x2 max-pool after the second, global average pool, linear to
//! 10 classes.

use bnorm::{BatchRenorm, BatchRenormConfig};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::activation::relu;
use burn::tensor::{backend::Backend, Tensor};

/// Which normalization follows each conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    BatchNorm,
    BatchRenorm,
    GroupNorm,
}

impl Norm {
    pub fn name(self) -> &'static str {
        match self {
            Norm::BatchNorm => "BatchNorm",
            Norm::BatchRenorm => "BatchRenorm",
            Norm::GroupNorm => "GroupNorm(4)",
        }
    }
}

/// A conv followed by one normalization (exactly one of the options is set).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    conv: Conv2d<B>,
    bn: Option<BatchNorm<B>>,
    brn: Option<BatchRenorm<B>>,
    gn: Option<GroupNorm<B>>,
}

impl<B: Backend> Block<B> {
    fn new(norm: Norm, channels: [usize; 2], total_steps: usize, device: &B::Device) -> Self {
        let conv = Conv2dConfig::new(channels, [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(device);
        let c = channels[1];
        Block {
            conv,
            bn: (norm == Norm::BatchNorm).then(|| BatchNormConfig::new(c).init(device)),
            brn: (norm == Norm::BatchRenorm).then(|| {
                BatchRenormConfig::new(c)
                    .with_steps_compressed_to(total_steps)
                    .init(device)
            }),
            gn: (norm == Norm::GroupNorm).then(|| GroupNormConfig::new(4, c).init(device)),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.conv.forward(x);
        let y = if let Some(bn) = &self.bn {
            bn.forward(y)
        } else if let Some(brn) = &self.brn {
            brn.forward(y)
        } else {
            self.gn.as_ref().expect("one normalization").forward(y)
        };
        relu(y)
    }
}

#[derive(Module, Debug)]
pub struct DigitsNet<B: Backend> {
    blocks: Vec<Block<B>>,
    pool: MaxPool2d,
    head: Linear<B>,
}

impl<B: Backend> DigitsNet<B> {
    /// `total_steps` sizes schedules that depend on the run length (BRN's).
    pub fn new(norm: Norm, total_steps: usize, device: &B::Device) -> Self {
        DigitsNet {
            blocks: vec![
                Block::new(norm, [1, 16], total_steps, device),
                Block::new(norm, [16, 32], total_steps, device),
                Block::new(norm, [32, 64], total_steps, device),
            ],
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            head: LinearConfig::new(64, 10).init(device),
        }
    }

    /// `[N, 1, 8, 8]` images to `[N, 10]` logits.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.blocks[0].forward(x);
        let x = self.blocks[1].forward(x);
        let x = self.pool.forward(x);
        let x = self.blocks[2].forward(x);
        let [n, c, _, _] = x.dims();
        let x = x.mean_dim(3).mean_dim(2).reshape([n, c]);
        self.head.forward(x)
    }
}
