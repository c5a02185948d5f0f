"""The feature space of an unconditional model's FD and KID (experiments.uncond_feature_space): its own proxy
classifier when the data have classes, the conditional data's classifier on pooled images when they have none."""
import dataclasses

import numpy as np
import pytest
import torch

from diffusion import experiments
from diffusion.metrics.classifier import classifier_features

SMOKE = {"config": "configs/mnist5k.yaml", "set": {"data.name": "mnist5k", "model.class_cond": False}}
COND = {"config": "configs/mnist5k.yaml", "set": {"data.name": "mnist5k", "model.class_cond": True}}


@pytest.fixture
def few_steps(monkeypatch):
    """A 20-step proxy classifier (the numbers are not the point here)."""
    real = experiments.proxy_classifier
    monkeypatch.setattr(experiments, "proxy_classifier", lambda spec, steps=None, dev=None: real(spec, 20, dev))


def test_labelled_data_use_their_own_classifier(few_steps):
    space = experiments.uncond_feature_space(SMOKE, COND)
    test = experiments.load_data(SMOKE, "test")
    assert space.classifier.data_name == "mnist5k" and "自身" in space.why
    np.testing.assert_array_equal(space.reference, classifier_features(space.classifier, test.images))
    assert space.features(test.images[:5]).shape == (5, 128)


def test_unlabelled_data_use_the_conditional_classifier_on_pooled_images(few_steps, monkeypatch):
    real_load = experiments.load_data
    mnist = real_load(COND, "test")  # 16×16 digits
    faces = dataclasses.replace(mnist, images=mnist.images.repeat_interleave(2, 2).repeat_interleave(2, 3)[:40],
                                labels=torch.zeros(40, dtype=torch.int64), num_classes=0, class_names=(),
                                label="unlabelled 32×32", name="celeba-6k", digest="")
    unlabelled = {"config": "configs/mnist5k.yaml", "set": {"data.name": "celeba-6k", "model.class_cond": False}}
    monkeypatch.setattr(experiments, "load_data",
                        lambda spec, split="train", cfg=None: faces if spec is unlabelled else real_load(spec, split, cfg))
    space = experiments.uncond_feature_space(unlabelled, COND)
    assert space.classifier.data_name == "mnist5k" and "16×16" in space.name and "没有类别标签" in space.why
    pooled = torch.nn.functional.avg_pool2d(faces.images.float(), 2).round().to(torch.uint8)
    np.testing.assert_array_equal(pooled, mnist.images[:40])  # the pooling undoes the ×2 repeat exactly
    np.testing.assert_array_equal(space.reference, classifier_features(space.classifier, mnist.images[:40]))
