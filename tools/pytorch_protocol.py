"""The small-batch demo's protocol in PyTorch, for cross-checking burn's runs.

Same data, split and batch order as `examples/small_batch.rs` (SplitMix64
with the same seeds), same model and SGD settings; weights come from
PyTorch's own initialization (torch.manual_seed(seed)), so runs compare
per configuration over seeds, not per step. BatchNorm, GroupNorm(4) and
the reference Batch Renormalization (ludvb/batchrenorm, with its own
defaults: the paper's uncompressed rmax/dmax ramps, momentum 0.01, eps on
the standard deviation), to see whether a behaviour is the protocol's,
the method's or ours.

    pip install torch
    git clone https://github.com/ludvb/batchrenorm /tmp/batchrenorm   # for --norms brn
    python tools/pytorch_protocol.py --norms gn --batch-sizes 32 --seeds 4
    python tools/pytorch_protocol.py --data fashion --norms bn,brn --batchrenorm /tmp/batchrenorm \\
        --epochs 2 --seeds 1 --batch-sizes 1,2,32

Not part of the tests or CI (it needs PyTorch).
"""
import gzip, math, os, sys
import torch, torch.nn as nn, torch.nn.functional as F

M = (1 << 64) - 1
class SplitMix64:
    def __init__(s, x): s.x = x & M
    def next(s):
        s.x = (s.x + 0x9E3779B97F4A7C15) & M
        z = s.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)
    def below(s, n): return s.next() % n
    def shuffle(s, a):
        for i in range(len(a) - 1, 0, -1):
            j = s.below(i + 1); a[i], a[j] = a[j], a[i]

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'data')

def load_digits():
    rows = [l.split(',') for l in gzip.open(os.path.join(DATA, 'optdigits-1797.csv.gz'), 'rt').read().split()]
    X = torch.tensor([[float(v) / 16.0 for v in r[:64]] for r in rows]).reshape(-1, 1, 8, 8)
    Y = torch.tensor([int(r[64]) for r in rows])
    order = list(range(len(Y))); SplitMix64(0).shuffle(order)
    tr, te = order[:len(order) - 360], order[len(order) - 360:]
    return X[tr], Y[tr], X[te], Y[te]

def load_fashion():
    def idx(name):
        raw = gzip.open(os.path.join(DATA, 'fashion-mnist-12k', name + '.idx.gz')).read()
        if raw[3] == 3:
            n, h, w = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(3))
            return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).float().div(255).reshape(n, 1, h, w)
        return torch.frombuffer(bytearray(raw[8:]), dtype=torch.uint8).long()
    return idx('train-images'), idx('train-labels'), idx('test-images'), idx('test-labels')

Xtr = Ytr = Xte = Yte = None

def epoch_batches(batch, sampling, rng):
    n = len(Ytr)
    if sampling == 'iid':
        o = list(range(n)); rng.shuffle(o)
        return [o[i:i + batch] for i in range(0, n - batch + 1, batch)]
    pairs = []
    for c in range(10):
        idx = [i for i in range(n) if Ytr[i] == c]; rng.shuffle(idx)
        pairs += [(idx[i], idx[i + 1]) for i in range(0, len(idx) - 1, 2)]
    rng.shuffle(pairs)
    h = batch // 2
    return [[k for p in pairs[i:i + h] for k in p] for i in range(0, len(pairs) - h + 1, h)]

def norm(kind, c):
    if kind == 'gn':
        return nn.GroupNorm(4, c)
    if kind == 'brn':
        from batchrenorm import BatchRenorm2d
        return BatchRenorm2d(c)
    return nn.BatchNorm2d(c)

class Net(nn.Module):
    def __init__(s, kind):
        super().__init__()
        s.c = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in [(1, 16), (16, 32), (32, 64)]])
        s.n = nn.ModuleList([norm(kind, b) for b in [16, 32, 64]])
        s.head = nn.Linear(64, 10)
    def forward(s, x):
        x = F.relu(s.n[0](s.c[0](x)))
        x = F.relu(s.n[1](s.c[1](x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(s.n[2](s.c[2](x)))
        return s.head(x.mean((2, 3)))

def run(kind, batch, sampling, seed, epochs=6, trace=False):
    torch.manual_seed(seed)
    net = Net(kind)
    base = max(0.1 * batch / 32, 0.01)
    opt = torch.optim.SGD(net.parameters(), lr=base, momentum=0.9, weight_decay=5e-4)
    rng = SplitMix64(seed ^ 0x5EED)
    per = len(epoch_batches(batch, sampling, SplitMix64(0)))
    total = per * epochs; step = 0; curve = []
    for _ in range(epochs):
        for b in epoch_batches(batch, sampling, rng):
            for g in opt.param_groups: g['lr'] = base * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(net(Xtr[b]), Ytr[b])
            if step % 10 == 0: curve.append(round(loss.item(), 2))
            opt.zero_grad(); loss.backward(); opt.step(); step += 1
    net.eval()
    with torch.no_grad(): acc = (net(Xte).argmax(1) == Yte).float().mean().item() * 100
    if trace: print('   loss every 10 steps:', curve)
    return acc

def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', default='digits', choices=['digits', 'fashion'])
    ap.add_argument('--norms', default='bn,gn', help='comma list of bn, gn, brn')
    ap.add_argument('--batchrenorm', help='a checkout of ludvb/batchrenorm, for brn')
    ap.add_argument('--batch-sizes', default='1,2,4,32')
    ap.add_argument('--sampling', default='iid,paired')
    ap.add_argument('--seeds', type=int, default=2)
    ap.add_argument('--epochs', type=int, default=6)
    ap.add_argument('--trace-seed', type=int, default=0, help='print this seed\'s loss every 10 steps')
    a = ap.parse_args()
    if a.batchrenorm:
        sys.path.insert(0, a.batchrenorm)
    global Xtr, Ytr, Xte, Yte
    Xtr, Ytr, Xte, Yte = load_fashion() if a.data == 'fashion' else load_digits()
    torch.set_num_threads(1)
    for kind in a.norms.split(','):
        for batch in map(int, a.batch_sizes.split(',')):
            for sampling in a.sampling.split(','):
                if sampling == 'paired' and batch < 2:
                    continue
                accs = [run(kind, batch, sampling, s, a.epochs, trace=(s == a.trace_seed))
                        for s in range(1, a.seeds + 1)]
                print(f'{kind} batch {batch} {sampling}: ' + ' '.join(f'{x:.1f}' for x in accs)
                      + f'  mean {sum(accs) / len(accs):.1f}', flush=True)

if __name__ == '__main__':
    main()
