import math

import torch

from diffusion.losses import discretized_gaussian_log_likelihood, normal_kl


def test_normal_kl_matches_monte_carlo(gen):
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-0.5), torch.tensor(-0.2), torch.tensor(0.4)
    x = m1 + torch.exp(0.5 * lv1) * torch.randn(400_000, generator=gen, dtype=torch.float64)
    logq = -0.5 * (math.log(2 * math.pi) + lv1 + (x - m1) ** 2 / torch.exp(lv1))
    logp = -0.5 * (math.log(2 * math.pi) + lv2 + (x - m2) ** 2 / torch.exp(lv2))
    mc = (logq - logp).mean()
    se = (logq - logp).std() / math.sqrt(len(x))
    analytic = normal_kl(m1, lv1, m2, lv2)
    assert abs(mc - analytic) < 4 * se
    assert normal_kl(m1, lv1, m1, lv1) == 0  # KL of a distribution with itself


def test_normal_kl_is_not_symmetric_and_positive():
    a = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0))
    b = normal_kl(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0))
    assert a > 0 and b > 0 and not torch.isclose(a, b)


def test_decoder_bins_sum_to_one():
    values = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 levels of 8-bit data
    for mean, log_scale in [(0.0, math.log(0.01)), (0.73, math.log(0.3)), (-0.999, math.log(0.002)),
                            (0.5, math.log(1e-4)), (3.0, math.log(0.5)), (-0.2, math.log(5.0))]:
        lp = discretized_gaussian_log_likelihood(values, torch.full((256,), mean, dtype=torch.float64),
                                                 torch.full((256,), log_scale, dtype=torch.float64))
        assert abs(torch.exp(lp).sum().item() - 1.0) < 1e-9
        # float32 inputs: bins of neighbouring levels overlap by rounding only
        lp32 = discretized_gaussian_log_likelihood(values.float(), torch.full((256,), mean), torch.full((256,), log_scale))
        assert abs(torch.exp(lp32.double()).sum().item() - 1.0) < 1e-4


def test_decoder_middle_bin_is_gaussian_mass():
    # a bin far from the edges: P = Φ((x+1/255-μ)/σ) − Φ((x−1/255−μ)/σ)
    x, mu, sigma = torch.tensor([0.2]), torch.tensor([0.21]), 0.05
    lp = discretized_gaussian_log_likelihood(x, mu, torch.tensor([math.log(sigma)]))
    nd = torch.distributions.Normal(0.21, sigma)
    expected = nd.cdf(torch.tensor(0.2 + 1 / 255)) - nd.cdf(torch.tensor(0.2 - 1 / 255))
    assert torch.allclose(lp.exp(), expected, rtol=1e-5)
    # edge bin: everything below −1 + 1/255
    lp0 = discretized_gaussian_log_likelihood(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([math.log(0.1)]))
    expected0 = torch.distributions.Normal(-1.0, 0.1).cdf(torch.tensor(-1 + 1 / 255))
    assert torch.allclose(lp0.exp(), expected0, rtol=1e-5)
