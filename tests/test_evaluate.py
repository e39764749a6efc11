"""kwta.evaluate on models of the test's own: torchvision's resnet18 after replace_relu, a linear model; the
result object, its JSON and Markdown, the input checks, and the attack registry."""

import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kwta
import kwta.binarization
from kwta import attacks, evaluation
from kwta.attacks import ATTACKS, AttackSettings, register
from kwta.data import get_datasets

CHEAP = AttackSettings(pgd_steps=4, pgd_restarts=1, deepfool_steps=3, autoattack_iterations=2, square_queries=8,
                       bpda_temperatures=(1.0,), bpda_steps=4, bpda_iterations=2, es_schedule=((2, 2),), es_restarts=1,
                       eot_samples=1, eot_steps=4)


def fashion_resnet18() -> nn.Module:
    """torchvision's resnet18 with k-WTA 0.2 for 1-channel 28-px images: what a researcher brings along."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=3, padding=1, bias=False)
    assert kwta.replace_relu(net, 0.2) == 9
    return net.eval()


@pytest.fixture(scope="module")
def fashion_images():
    _, test_ds, _ = get_datasets("fashion-mnist", augment=False)
    images = torch.stack([test_ds[i][0] for i in range(6)])
    labels = torch.tensor([test_ds[i][1] for i in range(6)])
    return test_ds, images, labels


def linear_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()


def linear_images(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(n, 3, 2, 2, generator=generator)
    return images, linear_model()(images).argmax(dim=1)  # every image classified correctly


def test_torchvision_resnet18_with_kwta_evaluated_in_one_call(fashion_images, tmp_path):
    test_ds, images, labels = fashion_images
    model = fashion_resnet18()
    model.train()
    result = kwta.evaluate(model, images, labels, eps=0.1, attacks=["pgd", "bpda", "es"], settings=CHEAP,
                           eps_curve=[0.3], batch_size=4)
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored after the evaluation
    assert result.n_images == 6 and result.attacks == ["pgd", "bpda", "es"]
    masks = result.robust[0.1]
    expected_worst = result.clean & masks["pgd"] & masks["bpda"] & masks["es"]
    assert torch.equal(masks["worst_case"], expected_worst)
    for name in ("clean", "pgd", "bpda", "es", "worst_case"):
        low, high = result.interval(name)
        assert low <= result.accuracy(name) <= high and result.count(name) == int(result._mask(name, 0.1).sum())
        assert result.accuracy("worst_case") <= result.accuracy(name) <= result.accuracy("clean")
    assert result.notes == ["es is uncalibrated: no ReLU network (source_model, the ReLU twin) to calibrate it on"]
    assert list(result.eps_curve) == [0.3] and result.pgd_curve().keys() == {0.1, 0.3}

    result.save_json(tmp_path / "eval.json", spec={"model": "resnet18"})
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["spec"] == {"model": "resnet18"} and saved["n_images"] == 6
    assert saved["results"][0]["count"]["worst_case"] == result.count("worst_case")
    assert saved["per_image"]["robust"]["0.1"]["worst_case"] == masks["worst_case"].int().tolist()
    assert saved["per_image"]["clean"] == result.clean.int().tolist()
    markdown = result.to_markdown()
    for column in ("clean", "PGD", "BPDA", "ES", "**worst case**", "PGD's eps curve"):
        assert column in markdown

    # the same images as a dataset or a DataLoader, in the same batches: the same seeds, the same figures
    as_dataset = kwta.evaluate(fashion_resnet18(), test_ds, eps=0.1, attacks=["pgd"], settings=CHEAP,
                               eps_curve="none", n_images=6, batch_size=4)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    as_loader = kwta.evaluate(fashion_resnet18(), loader, eps=0.1, attacks=["pgd"], settings=CHEAP, eps_curve="none")
    assert torch.equal(as_dataset.robust[0.1]["pgd"], masks["pgd"])
    assert torch.equal(as_loader.robust[0.1]["pgd"], masks["pgd"])


def test_inputs_outside_the_unit_interval_are_refused_with_the_cause(fashion_images):
    _, images, labels = fashion_images
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\].*normalisation inside the model"):
        kwta.evaluate(fashion_resnet18(), images * 2 - 1, labels, eps=0.1, attacks=["pgd"])


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(attacks=["nope"]), "attacks: choose from"),
    (dict(attacks=["transfer"]), "transfer needs a source_model"),
    (dict(eps=0), "eps must be"),
    (dict(eps=[0.1, 2]), "eps must be"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    images, labels = linear_images()
    with pytest.raises(ValueError, match=message):
        kwta.evaluate(linear_model(), images, labels, **{"eps": 0.1, **kwargs})


def test_labels_must_match_the_images():
    images, labels = linear_images()
    with pytest.raises(ValueError, match="labels: give one label per image"):
        kwta.evaluate(linear_model(), images, labels[:3], eps=0.1, attacks=["pgd"])
    with pytest.raises(TypeError, match="floating point"):
        kwta.evaluate(linear_model(), (images * 255).to(torch.uint8), labels, eps=0.1, attacks=["pgd"])


def test_es_calibration_runs_es_only_on_the_images_pgd_breaks(monkeypatch):
    """The verdict reads es only where PGD broke: es runs there alone, in batches as the suite cut them."""
    images, labels = linear_images(10)
    model = linear_model()
    batches = evaluation._my_batches(images, labels, None, 3, torch.device("cpu"))
    seen = []
    real_attack_batch = evaluation.attack_batch

    def spy(model, x, y, eps, names, *args, **kwargs):
        if names == ["es"]:
            seen.append(x.clone())
        return real_attack_batch(model, x, y, eps, names, *args, **kwargs)

    monkeypatch.setattr(evaluation, "attack_batch", spy)
    record = evaluation.calibrate_es(model, batches, 0.2, CHEAP, seed=0, device=torch.device("cpu"))
    clean, pgd, es = (torch.tensor(record["per_image"][key], dtype=torch.bool) for key in ("clean", "pgd", "es"))
    broken = clean & ~pgd
    assert 0 < int(broken.sum()) < len(images)  # the case tells: some images broken, some not
    assert torch.equal(torch.cat(seen), images[broken])  # es saw exactly PGD's breaks, in order
    assert torch.equal(es[~broken], pgd[~broken])  # elsewhere the record keeps PGD's mask


def test_the_suite_leaves_transfer_out_without_a_twin_and_calibrates_es_on_a_relu_model():
    images, labels = linear_images()
    result = kwta.evaluate(linear_model(), images, labels, eps=0.1, settings=CHEAP, eps_curve="none",
                           attacks=["pgd", "es"])
    calibration = result.es_calibration  # the model has no k-WTA layer: es is calibrated on it directly
    assert calibration["from"] == "this run" and calibration["eps"] <= 0.1
    # the eps it chose is the first of 0.1, 0.05, ... where PGD leaves 30-70%, or else the nearest to 50%
    low, high = evaluation.ES_CALIBRATION_BAND
    assert calibration["pgd_in_band"] == (low <= calibration["pgd"]["accuracy"] <= high)
    assert len(calibration["per_image"]["es"]) == result.n_images
    names, notes = evaluation._attack_names("all", None)
    assert "transfer" not in names
    assert notes == ["transfer left out of the suite: no source_model (the ReLU twin) given"]
    assert evaluation._attack_names("all", linear_model())[0] == list(attacks.TABLE_SUITE)


def test_a_new_attack_is_one_function_and_one_registration():
    images, labels = linear_images()

    @register("identity", "Identity", settings=("pgd_steps",))
    def identity(context, x, y, seed):
        return x.clone()

    try:
        assert ATTACKS["identity"].column == "Identity" and not ATTACKS["identity"].white_box
        result = kwta.evaluate(linear_model(), images, labels, eps=0.1, attacks=["identity"], eps_curve="none")
        assert torch.equal(result.robust[0.1]["identity"], result.clean)  # an attack that moves nothing breaks nothing
        with pytest.raises(ValueError, match="registered already"):
            register("identity", "Again")(identity)
    finally:
        del ATTACKS["identity"]
    with pytest.raises(ValueError, match="unknown settings"):
        register("broken", "Broken", settings=("no_such_setting",))(identity)
    assert "broken" not in ATTACKS


def test_the_masking_warning_follows_the_worst_case():
    """A model whose exact gradient is zero everywhere (a step function in front of a linear head): PGD finds
    nothing, es's finite differences do, and the warning says PGD's figure overstates robustness."""

    class Staircase(nn.Module):
        def forward(self, x):
            return torch.floor(x * 4) / 4 + 0 * x  # gradient 0 wherever it exists

    images, labels = linear_images(16)
    model = nn.Sequential(Staircase(), linear_model()).eval()
    labels = model(images).argmax(dim=1)
    settings = AttackSettings(pgd_steps=5, pgd_restarts=1, es_schedule=((10, 20),), es_restarts=1)
    result = kwta.evaluate(model, images, labels, eps=0.2, attacks=["pgd", "es"], settings=settings, eps_curve="none",
                           calibration_model=None)
    # PGD breaks only what its random start lands on; es's finite differences see the steps
    assert result.accuracy("clean") == 1.0 and result.accuracy("es") < result.accuracy("pgd") - 0.5
    assert result.vanishing_gradient_share == 1.0
    assert any("overstates robustness" in warning for warning in result.warnings)
    assert any("input gradients vanish" in warning for warning in result.warnings)


def test_the_binarization_test_reports_next_to_the_table_and_warns_of_a_weak_attack():
    images, labels = linear_images(6)
    weak = AttackSettings(pgd_steps=3, pgd_step=1e-7, pgd_restarts=1)
    result = kwta.evaluate(linear_model(), images, labels, eps=0.1, attacks=["pgd"], settings=weak, eps_curve="none",
                           binarization=kwta.binarization.BinarizationSettings(inner_points=99, images=4))
    found = result.binarization
    assert found["images"] == 4 and found["attacks"]["pgd"]["failed"] == found["tested"] > 0
    assert "Binarization test (Zimmermann et al. 2022)" in result.to_markdown()
    assert any(w.startswith("binarization test: pgd missed") for w in result.warnings)
    assert result.to_dict()["binarization"]["attacks"]["pgd"]["tested"] == found["tested"]


def test_the_binarization_test_runs_the_attacks_it_is_given():
    """BinarizationSettings(attacks=...): the test's own attacks, whatever the table ran ("all": the suite, less
    what needs a twin)."""
    images, labels = linear_images(4)
    cheap = AttackSettings(pgd_steps=3, pgd_restarts=1, eot_samples=1, eot_steps=3)
    test = kwta.binarization.BinarizationSettings(inner_points=19, images=2, attacks=("pgd", "eot"))
    result = kwta.evaluate(linear_model(), images, labels, eps=0.1, attacks=["pgd"], settings=cheap,
                           eps_curve="none", binarization=test)
    assert result.attacks == ["pgd"] and list(result.binarization["attacks"]) == ["pgd", "eot"]
