use bnorm::{BatchRenormConfig, Conv2dCbnConfig, CrossIterBatchNormConfig};
use burn::backend::{Autodiff, NdArray};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Distribution, Tensor};
type B = Autodiff<NdArray>;
fn run(label: &str, mut f: impl FnMut()) {
    let mut out = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            f();
        }
        out.push(format!("{:.0}", t.elapsed().as_secs_f64() * 1e3));
    }
    println!("{label}: us/step per 1000-step block: {}", out.join(" "));
}
fn main() {
    let device = Default::default();
    let x = Tensor::<B, 4>::random([1, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let p = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let conv = Conv2dConfig::new([8, 8], [3, 3])
        .with_padding(p.clone())
        .with_bias(false)
        .init::<B>(&device);
    let bn = BatchNormConfig::new(8).init::<B>(&device);
    let brn = BatchRenormConfig::new(8).init::<B>(&device);
    let k1 = Conv2dCbnConfig::new([8, 8], [3, 3])
        .with_padding(p.clone())
        .with_bias(false)
        .with_window(1)
        .init::<B>(&device);
    let k8 = Conv2dCbnConfig::new([8, 8], [3, 3])
        .with_padding(p.clone())
        .with_bias(false)
        .with_window(8)
        .init::<B>(&device);
    let k8ng = Conv2dCbnConfig::new([8, 8], [3, 3])
        .with_padding(p.clone())
        .with_bias(false)
        .with_norm(
            CrossIterBatchNormConfig::new(0)
                .with_window(8)
                .with_history_gradient(false),
        )
        .init::<B>(&device);
    let k8r0 = Conv2dCbnConfig::new([8, 8], [3, 3])
        .with_padding(p)
        .with_bias(false)
        .with_norm(
            CrossIterBatchNormConfig::new(0)
                .with_window(8)
                .with_rho(0.0),
        )
        .init::<B>(&device);
    run("conv+bn", || {
        let x = x.clone().require_grad();
        let g = bn.forward(conv.forward(x.clone())).sum().backward();
        let _ = x.grad(&g).unwrap().sum().into_data();
    });
    run("brn", || {
        let x = x.clone().require_grad();
        let g = brn.forward(x.clone()).sum().backward();
        let _ = x.grad(&g).unwrap().sum().into_data();
    });
    run("cbn k1", || {
        let x = x.clone().require_grad();
        let g = k1.forward(x.clone()).sum().backward();
        let _ = x.grad(&g).unwrap().sum().into_data();
    });
    run("cbn k8 no history grad", || {
        let x = x.clone().require_grad();
        let g = k8ng.forward(x.clone()).sum().backward();
        let _ = x.grad(&g).unwrap().sum().into_data();
    });
    run("cbn k8 rho 0", || {
        let x = x.clone().require_grad();
        let g = k8r0.forward(x.clone()).sum().backward();
        let _ = x.grad(&g).unwrap().sum().into_data();
    });
    run("cbn k8", || {
        let x = x.clone().require_grad();
        let g = k8.forward(x.clone()).sum().backward();
        let _ = x.grad(&g).unwrap().sum().into_data();
    });
}
