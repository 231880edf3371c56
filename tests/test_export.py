"""Deployment of both families: FX, TorchScript, torch.export and ONNX (boat_vit.export).

The default suite uses one small two-stage config per family at 60x60, which exercises FSLA's clustering
with padding (225 tokens: 4 groups of 57 slots) and a single-group FSLA (64 tokens). Full-size models at 224
and another size are ``slow``.
"""
import os
import re
import signal
import subprocess
import sys
import warnings

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import boat_vit  # noqa: F401  (registers the models)
from boat_vit.errors import ConfigError, ExportMismatchError, OutputError, OutputExistsError
from boat_vit.export import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    FORMATS,
    MAX_OPSET,
    MIN_OPSET,
    NEAR_TIE_SPREAD,
    check_export,
    compare_outputs,
    export_model,
    float64_outputs,
    load_exported,
    max_difference,
    remove_stale_staging,
)

onnx = pytest.importorskip("onnx")  # the [export] extra; the test extra brings it

SWIN = "boat_swin_tiny_patch4_window7_224"
CSWIN = "boat_cswin_tiny_224"
SIZE = 60
SMALL = {
    SWIN: dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), img_size=SIZE),
    CSWIN: dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2), split_size=(1, 2), img_size=SIZE),
}
NUM_CLASSES = 5
# another size each family runs at without being rebuilt (Swin: with dynamic_img_size=True)
OTHER_SIZE = (52, 76)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
FAMILIES = pytest.mark.parametrize("name", [SWIN, CSWIN])


def small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=NUM_CLASSES, drop_path_rate=0.0, **SMALL[name], **kwargs).eval()


def images(batch: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, height, width)


def fx_extractor(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """torchvision's feature extractor with timm's leaf modules and functions: the final output and stage 0."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    # a module's name stands for its output
    return_nodes = {(train_nodes if train else eval_nodes)[-1]: "out", model.feature_info[0]["module"]: "stage0"}
    return create_feature_extractor(
        model, train_return_nodes=return_nodes, eval_return_nodes=return_nodes, tracer_kwargs=tracer_kwargs
    )


# ---- FX -----------------------------------------------------------------------------------------------------


@FAMILIES
def test_fx_trace_forward_equals_eager(name):
    model = small(name)
    traced = fx_extractor(model)
    # FSLA is one leaf node (its group layout is Python control flow); its projections are not traced into
    assert any(type(m).__name__ == "FeatureSpaceLocalAttention" for m in traced.modules())
    x = images(2)
    with torch.no_grad():
        out = traced(x)
        assert torch.equal(out["out"], model(x))
        stage0 = out["stage0"].permute(0, 3, 1, 2) if name == SWIN else out["stage0"]  # Swin's stages are NHWC
        assert torch.equal(stage0, model.forward_intermediates(x, indices=[0], intermediates_only=True)[0])


@FAMILIES
def test_fx_trace_backward_equals_eager(name):
    model = small(name).train()
    traced = fx_extractor(model, train=True)
    x = images(2)
    traced(x)["out"].square().mean().backward()
    fx_grads = {n: p.grad for n, p in traced.named_parameters()}
    assert all(g is not None for g in fx_grads.values())
    model.zero_grad()
    model(x).square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fx_grads[n], p.grad, rtol=0, atol=0, msg=n)


@FAMILIES
@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing the model in eval mode")
def test_timm_fx_features_only(name):
    torch.manual_seed(0)
    fx = timm.create_model(name, features_only=True, feature_cls="fx", **SMALL[name]).eval()
    torch.manual_seed(0)
    hooks = timm.create_model(name, features_only=True, **SMALL[name]).eval()
    assert type(fx).__name__ == "FeatureGraphNet"
    x = images(2)
    with torch.no_grad():
        for a, b in zip(fx(x), hooks(x), strict=True):
            assert torch.equal(a, b)


# ---- TorchScript --------------------------------------------------------------------------------------------


@FAMILIES
def test_torchscript_is_exact_at_any_batch_and_size(name, tmp_path):
    kwargs = dict(dynamic_img_size=True) if name == SWIN else {}
    model = small(name, **kwargs)
    checks = [images(1), images(3), images(2, *OTHER_SIZE)]
    result = export_model(model, "torchscript", tmp_path / "model.pt", images(1), checks, tolerance=1e-30)
    assert result.agreement.differences == (0.0,) * 6 and result.agreement.top1 == 6
    scripted = load_exported(result.path, "torchscript")
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert check_export(model, scripted, [images(2, *OTHER_SIZE)]).largest == 0.0


@FAMILIES
def test_fx_graph_scripts(name):
    """timm's FX + TorchScript route: the traced graph, FSLA leaves and wrapped functions included, scripts."""
    model = small(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(fx_extractor(model))
    x = images(2)
    with torch.no_grad():
        assert torch.equal(scripted(x)["out"], model(x))


# ---- torch.export and ONNX ----------------------------------------------------------------------------------


@FAMILIES
def test_exported_program_has_a_dynamic_batch(name, tmp_path):
    model = small(name)
    result = export_model(model, "exported-program", tmp_path / "model.pt2", images(1), [images(1), images(3)],
                          dynamic_batch=True)
    program = torch.export.load(result.path)
    batch = program.graph_signature.user_inputs[0]
    shape = next(n for n in program.graph.nodes if n.name == batch).meta["val"].shape
    assert isinstance(shape[0], torch.SymInt) and shape[1:] == (3, SIZE, SIZE)
    assert result.agreement.largest <= DEFAULT_TOLERANCE and result.agreement.images == 4
    exported = load_exported(result.path, "exported-program")
    with pytest.raises(AssertionError, match=rf"Guard failed: x.size\(\)\[2\] == {SIZE}"):  # H, W are the example's
        exported(images(1, *OTHER_SIZE))


@FAMILIES
def test_onnx_matches_pytorch_with_a_dynamic_batch(name, tmp_path):
    model = small(name)
    steps = []
    result = export_model(model, "onnx", tmp_path / "model.onnx", images(2), [images(1), images(3)],
                          dynamic_batch=True, on_step=steps.append)
    assert [line.split(":")[0] for line in steps] == ["eager", "trace", "convert", "save", "reload", "check"]
    assert list(result.seconds) == ["eager", "trace", "convert", "save", "reload", "check"]
    assert steps[-1].startswith("check: ") and "4/4 images within 0.0001" in steps[-1]
    graph = onnx.load(str(result.path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == DEFAULT_OPSET
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic
    assert result.agreement.largest <= DEFAULT_TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_onnx_opsets(tmp_path):
    model = small(CSWIN)
    for opset in (MIN_OPSET - 1, MAX_OPSET + 1, 999):
        with pytest.raises(ValueError, match=rf"ONNX opset must be between 18 and 22, got {opset}"):
            export_model(model, "onnx", tmp_path / "m.onnx", images(1), opset=opset)
    result = export_model(model, "onnx", tmp_path / "m.onnx", images(1), opset=MAX_OPSET)
    assert max(o.version for o in onnx.load(str(result.path)).opset_import if o.domain in ("", "ai.onnx")) == MAX_OPSET
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_onnx_without_its_packages_is_one_error(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"ONNX export needs onnx, onnxscript, onnxruntime; missing: onnxscript "
                                         r"\(pip install 'boat-vit\[export\]'\)"):
        export_model(small(CSWIN), "onnx", tmp_path / "m.onnx", images(1))
    assert not any(tmp_path.iterdir())


# ---- the check -----------------------------------------------------------------------------------------------


def test_agreement_and_its_judgement():
    model = small(CSWIN)
    x = images(4)
    with torch.no_grad():
        logits = model(x)
    exact = check_export(model, model, x)
    assert exact.differences == (0.0,) * 4 and (exact.top1, exact.top5) == (4, 4)
    # one image of four moved as by flipped near-ties: accepted; its size is the judgement's limit
    flip = torch.zeros_like(logits)
    flip[1] = 3e-3
    accepted = check_export({"b": logits}, lambda images: logits + flip, {"b": x})
    assert accepted.median == 0.0 and accepted.largest == pytest.approx(3e-3) and accepted.within(1e-4) == 3
    with pytest.raises(ExportMismatchError, match=r"an image differs by 0.003 > near-tie limit 0.001"):
        check_export({"b": logits}, lambda images: logits + flip, {"b": x}, near_tie_tolerance=1e-3)
    # every image moved (a wrong weight): refused; the model's float64 copy moves no image beyond rounding
    with pytest.raises(ExportMismatchError, match=r"the median image differs by 0.001 > tolerance 0.0001 "
                                                  r"\(0/4 images within 0.0001, .* max 1.00e-03, top-1 4/4, top-5 4/4; "
                                                  r"float64 moves 0/4 beyond 0.0001 \(max \d.\d\de-\d\d\), the other 4 "
                                                  r"differ by median 1.00e-03\)"):
        check_export(model, lambda images: model(images) + 1e-3, x)
    with pytest.raises(ExportMismatchError, match="NaN outputs"):
        check_export(model, lambda images: model(images) * float("nan"), x)
    with pytest.raises(ExportMismatchError, match=r"shape \(4, 4\) != expected \(4, 5\)"):
        check_export(model, lambda images: model(images)[:, :4], x)
    ranked = torch.arange(10.0).expand(4, 10)
    top = compare_outputs(ranked, ranked.flip(-1))  # every ranking reversed: the top 5 become the last 5
    assert top.top1 == 0 and top.top5 == 0
    assert max_difference([torch.zeros(2), torch.ones(3)], [torch.zeros(2), torch.full((3,), 1.5)]) == 0.5
    with pytest.raises(ExportMismatchError, match="expected 2 outputs, got 1"):
        max_difference([torch.zeros(2), torch.zeros(2)], torch.zeros(2))


def test_images_that_float64_moves_are_judged_by_the_near_tie_limit():
    """The model's own near ties (float64 moves images 3-5) excuse an export's flips, not a general shift."""
    logits = torch.randn(6, NUM_CLASSES)
    near_ties = torch.tensor([0, 0, 0, 3e-3, 3e-3, 3e-3]).unsqueeze(1)
    exact = {"b": logits.double() + near_ties}
    x = {"b": images(6)}
    # the export flips near ties on images 1, 4 and 5, by more than float64 does (2e-2 > 3e-3)
    flips = logits + torch.tensor([0, 2e-2, 0, 0, 2e-2, 2e-2]).unsqueeze(1)
    accepted = check_export({"b": logits}, lambda images: flips, x, exact=exact)
    assert accepted.rounding == pytest.approx((0, 0, 0, 3e-3, 3e-3, 3e-3))
    assert accepted.free_of_near_ties(DEFAULT_TOLERANCE) == pytest.approx((0, 2e-2, 0))
    assert accepted.near_tie_limit(1e-2) == pytest.approx(NEAR_TIE_SPREAD * 3e-3)
    assert "float64 moves 3/6 beyond 0.0001 (max 3.00e-03), the other 3 differ by median 0.00e+00" in (
        accepted.summary(DEFAULT_TOLERANCE))
    # without the float64 reference the same export fails: its median image moved
    with pytest.raises(ExportMismatchError, match=r"the median image differs by 0.01 > tolerance 0.0001"):
        check_export({"b": logits}, lambda images: flips, x)
    # a shift of every image is refused on the images free of near ties
    with pytest.raises(ExportMismatchError, match=r"the median image free of near ties \(3 of 6\) differs by 0.001 "
                                                  r"> tolerance 0.0001"):
        check_export({"b": logits}, lambda images: logits + 1e-3, x, exact=exact)
    # a flip larger than NEAR_TIE_SPREAD times float64's largest move is refused
    with pytest.raises(ExportMismatchError, match=r"an image differs by 0.05 > near-tie limit 0.03"):
        check_export({"b": logits}, lambda images: logits + torch.tensor([0, 0, 0, 0, 5e-2, 0]).unsqueeze(1), x,
                     exact=exact)
    # float64 moves every image: nothing is free of near ties, the median over all images decides
    everywhere = {"b": logits.double() + 3e-3}
    two_flips = logits + torch.tensor([0, 0, 0, 0, 3e-3, 3e-3]).unsqueeze(1)
    assert check_export({"b": logits}, lambda images: two_flips, x, exact=everywhere).within(DEFAULT_TOLERANCE) == 4
    with pytest.raises(ExportMismatchError, match=r"the median image differs by 0.002 > tolerance 0.0001, and float64 "
                                                  r"moves every image beyond it: no check image is free of near ties"):
        check_export({"b": logits}, lambda images: logits + 2e-3, x, exact=everywhere)


def test_the_float64_reference_is_measured_on_the_model_and_left_out_where_it_cannot_run():
    model = small(SWIN)
    x = images(3)
    exact = float64_outputs(model, x)
    assert exact["batch 0"].dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert (exact["batch 0"] - model(x).double()).abs().max() < 1e-4
    rounding = check_export(model, model, x).rounding
    assert len(rounding) == 3 and max(rounding) < 1e-4

    class Float32Only(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(images.flatten(1), torch.ones(2, images[0].numel()))

    with pytest.raises(ConfigError, match="the model does not run in float64: .*"):
        float64_outputs(Float32Only(), x)
    assert check_export(Float32Only(), Float32Only(), x).rounding is None


def _corrupt(path, fmt: str) -> None:
    """Adds 0.5 to one element of the classifier's weight inside an exported file (every image's logits move)."""
    if fmt == "onnx":
        from onnx import numpy_helper

        graph = onnx.load(str(path))
        tensor = next(t for t in graph.graph.initializer if "head.fc.weight" in t.name)
        values = numpy_helper.to_array(tensor).copy()
        values.flat[0] += 0.5
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        onnx.save(graph, str(path))
    elif fmt == "exported-program":
        program = torch.export.load(path)
        weight = next(v for k, v in program.state_dict.items() if "head.fc.weight" in k)
        with torch.no_grad():
            weight.view(-1)[0] += 0.5
        torch.export.save(program, path)
    else:
        scripted = load_exported(path, fmt)
        weight = next(v for k, v in scripted.state_dict().items() if "head.fc.weight" in k)
        with torch.no_grad():
            weight.view(-1)[0] += 0.5
        scripted.save(str(path))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_check_catches_a_corrupted_weight(fmt, tmp_path):
    model = small(SWIN)
    checks = [images(2), images(2)]
    path = export_model(model, fmt, tmp_path / f"model{SUFFIXES[fmt]}", images(2), checks).path
    _corrupt(path, fmt)
    with pytest.raises(ExportMismatchError, match="the median image differs by .* float64 moves 0/4"):
        check_export(model, load_exported(path, fmt), checks)


@pytest.mark.parametrize("fmt", ["onnx", "exported-program"])
def test_a_wrong_size_export_fails_and_is_not_written(fmt, tmp_path):
    """An export traced for one image size, checked at another (what a wrong size would be)."""
    model = small(CSWIN)
    with pytest.raises(ExportMismatchError, match=r"the exported model fails on input \(2, 3, 60, 60\)"):
        export_model(model, fmt, tmp_path / f"m{SUFFIXES[fmt]}", images(2, 52, 52), images(2))
    assert not any(tmp_path.iterdir())


# ---- what a failed or interrupted export leaves: nothing ------------------------------------------------------


def test_export_argument_errors(tmp_path):
    model = small(CSWIN)
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(model, "tflite", tmp_path / "m", images(1))
    with pytest.raises(ValueError, match="unknown export format"):
        load_exported(tmp_path / "m", "tflite")
    with pytest.raises(ValueError, match="eval-mode"):
        export_model(model.train(), "onnx", tmp_path / "m.onnx", images(1))
    with pytest.raises(ConfigError, match=r"the model does not run on 2x2 images \(check inputs \(1, 3, 2, 2\)\)"):
        export_model(model.eval(), "torchscript", tmp_path / "m.pt", images(1, 2, 2))
    assert not any(tmp_path.iterdir())


def test_an_existing_output_is_kept_unless_overwrite(tmp_path):
    model = small(CSWIN)
    kept = tmp_path / "model.pt"
    kept.write_bytes(b"the user's file")
    with pytest.raises(OutputExistsError, match=r"path='.*model.pt' exists; pass overwrite=True to replace it"):
        export_model(model, "torchscript", kept, images(1))
    assert kept.read_bytes() == b"the user's file"
    with pytest.raises(OutputError, match="the folder .*missing does not exist"):
        export_model(model, "torchscript", tmp_path / "missing" / "model.pt", images(1))
    export_model(model, "torchscript", kept, images(1), overwrite=True)
    assert check_export(model, load_exported(kept, "torchscript"), [images(2)], tolerance=1e-30).largest == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no staging folder left behind


def test_a_planted_link_is_replaced_never_followed(tmp_path):
    model = small(CSWIN)
    target = tmp_path / "elsewhere.txt"
    target.write_text("someone else's file")
    link = tmp_path / "model.pt"
    link.symlink_to(target)
    with pytest.raises(OutputExistsError):
        export_model(model, "torchscript", link, images(1))
    dangling = tmp_path / "dangling.pt"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError):  # a dangling link is something too
        export_model(model, "torchscript", dangling, images(1))
    export_model(model, "torchscript", link, images(1), overwrite=True)
    assert target.read_text() == "someone else's file"
    assert not link.is_symlink() and isinstance(load_exported(link, "torchscript"), torch.jit.ScriptModule)


def test_a_failed_check_keeps_no_file(tmp_path):
    model = small(SWIN)
    with pytest.raises(ExportMismatchError, match=r"the median image differs by .* > tolerance 1e-30"):
        export_model(model, "onnx", tmp_path / "m.onnx", images(2), [images(2), images(2)], tolerance=1e-30)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("step", ["trace", "save", "check"])
def test_an_interrupt_keeps_no_file(step, tmp_path):
    def interrupt(line: str) -> None:
        if line.startswith(step):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_model(small(CSWIN), "exported-program", tmp_path / "m.pt2", images(1), on_step=interrupt)
    assert not any(tmp_path.iterdir())


KILLED_EXPORT = """
import os, signal, sys, timm, torch, boat_vit
from boat_vit.export import export_model
model = timm.create_model("boat_cswin_tiny_224", num_classes=5, embed_dim=16, depths=(1, 1), num_heads=(2, 2),
                          split_size=(1, 2), img_size=60).eval()

def kill_at_save(line):
    print(line, flush=True)
    if line.startswith("save"):
        os.kill(os.getpid(), signal.SIGKILL)

export_model(model, "exported-program", sys.argv[1], torch.randn(1, 3, 60, 60), on_step=kill_at_save)
"""


def test_a_killed_exports_staging_folder_is_removed_by_the_next(tmp_path):
    output = tmp_path / "m.pt2"
    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(output)], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL and "save: " in killed.stdout, killed.stderr
    staging = [p.name for p in tmp_path.iterdir()]
    assert len(staging) == 1 and staging[0].startswith(".m.pt2.") and staging[0].endswith(".export-staging")
    assert (tmp_path / staging[0] / "m.pt2").is_file()  # written, never checked, never published
    export_model(small(CSWIN), "torchscript", tmp_path / "other.pt", images(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


def test_a_live_exports_staging_folder_is_kept(tmp_path):
    import fcntl

    live = tmp_path / ".m.onnx.abc.export-staging"
    live.mkdir()
    descriptor = os.open(live, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".planted.export-staging").symlink_to(elsewhere)
    try:
        assert remove_stale_staging(tmp_path) == []
    finally:
        os.close(descriptor)
    assert remove_stale_staging(tmp_path) == [live]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".planted.export-staging", "elsewhere"]


# ---- full size (slow) ---------------------------------------------------------------------------------------


@pytest.mark.slow
@FAMILIES
@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_models_export_at_default_settings(name, fmt, tmp_path, capsys):
    """``boat-vit export`` of each family's T model with timm-initialised weights, every format, defaults."""
    from boat_vit.files import save_safetensors
    from boat_vit.cli import main

    torch.manual_seed(0)
    save_safetensors(timm.create_model(name).state_dict(), tmp_path / "weights.safetensors")
    output = tmp_path / f"model{SUFFIXES[fmt]}"
    assert main(["export", name, "--pretrained-file", str(tmp_path / "weights.safetensors"), "--format", fmt,
                 "--output", str(output)]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = ["eager", "trace", *(["convert"] if fmt == "onnx" else []), "save", "reload", "check"]
    assert [line.split(":")[0] for line in lines[:-1]] == steps
    assert lines[-1].startswith(f"wrote {output} ({fmt}, 224x224, batch ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name, "weights.safetensors"]


# ---- boat-vit export ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_tiny(shapes_folder, tmp_path_factory):
    """A one-epoch training checkpoint of a tiny BOAT-Swin (16x16 images, two classes)."""
    from boat_vit.cli import main
    from tiny_data import train_args

    run = tmp_path_factory.mktemp("export") / "run"
    assert main(train_args(shapes_folder, run, 1)) == 0
    return run / "last.pth"


@pytest.mark.parametrize("fmt, suffix, extra", [("torchscript", ".pt", []),
                                                 ("exported-program", ".pt2", ["--dynamic-batch"])])
def test_export_command_prints_each_step_and_checks_random_and_real_inputs(trained_tiny, tmp_path, capsys, fmt,
                                                                           suffix, extra):
    from boat_vit.cli import main

    output = tmp_path / f"model{suffix}"
    assert main(["export", SWIN, "--checkpoint", str(trained_tiny), "--format", fmt, "--output", str(output),
                 *extra]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["eager", "trace", "save", "reload", "check"]
    assert all(re.fullmatch(r"\w+: \d+\.\d s(; .*)?", line) for line in lines[:-1]), lines
    assert "16/16 images within 0.0001" in lines[-2] and "top-1 16/16" in lines[-2]
    assert re.fullmatch(rf"wrote {re.escape(str(output))} \({fmt}, 16x16, batch dynamic\) in \d+ s", lines[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]
    reloaded = load_exported(output, fmt)
    assert reloaded(torch.zeros(5, 3, 16, 16)).shape == (5, 2)


def test_export_command_fails_above_the_tolerance_and_keeps_no_file(trained_tiny, tmp_path, capsys):
    from boat_vit.cli import main

    assert main(["export", SWIN, "--checkpoint", str(trained_tiny), "--format", "onnx", "--output",
                 str(tmp_path / "m.onnx"), "--tolerance", "1e-30"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "disagrees with eager PyTorch" in error and "> tolerance 1e-30" in error
    assert not any(tmp_path.iterdir())


def test_export_command_refuses_another_model(trained_tiny, tmp_path, capsys):
    from boat_vit.cli import main

    assert main(["export", CSWIN, "--checkpoint", str(trained_tiny), "--format", "onnx", "--output",
                 str(tmp_path / "m.onnx")]) == 2
    assert f"holds {SWIN}, not {CSWIN}" in capsys.readouterr().err


def test_export_command_interrupted_after_the_write_exits_130_and_keeps_no_file(trained_tiny, tmp_path):
    """SIGINT sent by the export's own process once the file is staged: exit 130, one line, no file."""
    code = ("import os, signal, sys, builtins\n"
            "from boat_vit.cli import main\n"
            "real_print = builtins.print\n"
            "def print(*args, **kwargs):\n"
            "    real_print(*args, **kwargs)\n"
            "    if str(args[0]).startswith('save'):\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "builtins.print = print\n"
            "sys.exit(main(sys.argv[1:]))\n")
    output = tmp_path / "m.pt"
    done = subprocess.run([sys.executable, "-c", code, "export", SWIN, "--checkpoint", str(trained_tiny), "--format",
                           "torchscript", "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 130 and "save: " in done.stdout, done.stderr
    assert done.stderr.strip() == "boat-vit export: interrupted"
    assert not any(tmp_path.iterdir())


def test_export_to_a_full_disk_is_one_line_naming_the_output(trained_tiny, tmp_path):
    """The save step on a full disk: one line that names the output (not the staging folder), nothing left."""
    from test_reliability import _in_a_mount_namespace

    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "boat_vit", "export", SWIN, "--checkpoint",
                                           str(trained_tiny), "--format", "torchscript", "--output", "full/model.pt"])
    result = _in_a_mount_namespace(f"mkdir full && mount -t tmpfs -o size=16k tmpfs full && "
                                   f"{{ {command} && echo status 0 || echo status $?; }} && ls -A full", tmp_path)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "status 2", result.stderr[-2000:]  # and nothing in the folder (ls -A lists nothing)
    assert result.stderr.strip().splitlines() == ["boat-vit export: error: [Errno 28] No space left on device: "
                                                  "'full/model.pt'"]
