"""test_whole_path.py - one request across the seam (issue 18): the same settings through
`perflow generate`, through `perflow generate --refine` and `perflow refine` of generate's
PNG, and through `perflow submit` into bin/perflow-worker (Apache Kafka, the model fetched
from nginx, file:// outputs) give pixel-identical images and record the same prediction type
and windows. Each for a model folder whose scheduler config is a PeRFlowScheduler's and for a
copy whose scheduler config is the base model's own (a PNDMScheduler without a prediction
type, as SD-1.5 folders come; an EulerDiscreteScheduler with "epsilon" for SDXL), so that the
defaults each path takes are the model's, resolved in one place (engine/pipeline/request.h): SD-1.x
takes diff_eps, SDXL ddim_eps, 4 windows. No flag names a prediction type or windows here.
SDXL has no refiner (ControlNet-Tile is an SD-1.5 model): its paths are generate and submit."""
import json
import os
import re
import subprocess

import pytest

from conftest import BIN, ROOT
from test_worker import png_rgb, png_text

MODELS = os.path.join(ROOT, "tests", "data", "models")
PERFLOW = os.path.join(BIN, "perflow")
PNDM = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False}
EULER = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1}
# (case, tiny model, base scheduler config or None, the prediction type every path must record)
CASES = [("sd15-perflow", "tiny-sd15", None, "diff_eps"), ("sd15-base", "tiny-sd15", PNDM, "diff_eps"),
         ("sdxl-perflow", "tiny-sdxl", None, "ddim_eps"), ("sdxl-base", "tiny-sdxl", EULER, "ddim_eps")]
SETTINGS = ["--prompt", "a photo of a cat", "--negative-prompt", "blurry", "--seed", "11", "--width", "64",
            "--height", "64", "--steps", "3", "--guidance", "5"]
REFINE = ["--refine-size", "128", "--refine-steps", "3"]


def served_model(r, name, config):
    """(local folder, URL) of the tiny model, or of a copy with the base scheduler config
    (links to the other components) placed where nginx serves it."""
    if config is None:
        return os.path.join(MODELS, name), "http://127.0.0.1:%d/%s" % (r.nginx.port, name)
    www = os.path.join(os.path.dirname(r.dir), "www")  # conftest.start_model_server's
    assert os.path.isdir(www), www
    copy = name + "-base-scheduler"
    d = os.path.join(www, copy)
    if not os.path.isdir(d):
        os.makedirs(os.path.join(d, "scheduler"))
        for part in os.listdir(os.path.join(MODELS, name)):
            if part != "scheduler":
                os.symlink(os.path.join(MODELS, name, part), os.path.join(d, part))
        with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(config, f)
    return d, "http://127.0.0.1:%d/%s" % (r.nginx.port, copy)


def run(argv, env=None):
    p = subprocess.run(argv, env=env or dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, "%s: %s%s" % (argv[:2], p.stdout, p.stderr)
    return p


def image(path):
    data = open(path, "rb").read()
    return png_rgb(data), png_text(data)


def same_pixels(what, got, want):
    assert got[:2] == want[:2], "%s: %s != %s" % (what, got[:2], want[:2])
    diff = sum(a != b for a, b in zip(got[2], want[2]))
    assert diff == 0, "%s: %d of %d values differ" % (what, diff, len(want[2]))


@pytest.mark.parametrize("case,name,config,prediction", CASES, ids=[c[0] for c in CASES])
def test_same_settings_same_image_on_every_path(rig, case, name, config, prediction):
    r = rig(partitions=1)
    folder, url = served_model(r, name, config)
    sdxl = name == "tiny-sdxl"
    local = ["--model", folder, *SETTINGS, "--device", "cpu", "--threads", "1"]
    # perflow generate, and for SD-1.x generate --refine and refine of generate's PNG
    gen = os.path.join(r.dir, "gen.png")
    run([PERFLOW, "generate", *local, "--out", gen])
    base = image(gen)
    recorded = {"generate": base[1]}
    cn = os.path.join(MODELS, "tiny-sd15-controlnet")
    if not sdxl:
        chained = os.path.join(r.dir, "chained.png")
        run([PERFLOW, "generate", *local, "--refine", "--controlnet", cn, *REFINE, "--out", chained])
        refined = os.path.join(r.dir, "refined.png")
        run([PERFLOW, "refine", "--model", folder, "--controlnet", cn, "--image", gen, "--out", refined, "--size",
             "128", "--steps", "3", "--seed", "11", "--device", "cpu", "--threads", "1"])
        fine = image(refined)
        same_pixels(case + ": generate --refine vs refine of generate's PNG", image(chained)[0], fine[0])
        recorded["generate --refine"] = image(chained)[1]
        recorded["refine"] = fine[1]
    # perflow submit into the worker, file:// outputs
    out_root = os.path.join(r.dir, "out")
    os.makedirs(out_root)
    env = r.env(PERFLOW_FILE_OUTPUT_ROOT=out_root)
    r.start_worker(**{"PERFLOW_FILE_OUTPUT_ROOT": out_root})
    args = [PERFLOW, "submit", "--model-url", url, *SETTINGS, "--output",
            "file://%s/{job_id}/{stage}-{index}.png" % out_root, "--wait", "--timeout", "240"]
    if not sdxl:
        args += ["--refine", "--controlnet-url", "http://127.0.0.1:%d/tiny-sd15-controlnet" % r.nginx.port, *REFINE,
                 "--keep-base"]
    run(args, env=env)
    (job_id,) = os.listdir(out_root)
    got = image(os.path.join(out_root, job_id, "base-0.png"))
    same_pixels(case + ": submit + worker vs generate", got[0], base[0])
    recorded["worker"] = got[1]
    if not sdxl:
        got = image(os.path.join(out_root, job_id, "refined-0.png"))
        same_pixels(case + ": submit + worker (refined) vs generate --refine", got[0], fine[0])
        recorded["worker (refined)"] = got[1]
    # every path records the prediction type and windows it ran with: the model's, also in
    # the A1111 "parameters" text, read as A1111's own parser reads it
    for path, text in recorded.items():
        assert (text.get("prediction_type"), text.get("windows")) == (prediction, "4"), (case, path, text)
        params = a1111_settings(text["parameters"])
        assert (params["Prediction type"], params["Windows"]) == (prediction, "4"), (case, path, params)
    first = a1111_settings(recorded["generate"]["parameters"])
    assert first["Steps"] == "3" and first["Seed"] == "11" and first["Size"] == "64x64" and first["CFG scale"] == "5"
    assert recorded["generate"]["parameters"].startswith("a photo of a cat\nNegative prompt: blurry\nSteps: 3, ")
    worker = a1111_settings(recorded["worker"]["parameters"])  # the worker does not name the model
    assert {k: v for k, v in worker.items() if k != "Model"} == {k: v for k, v in first.items() if k != "Model"}


def a1111_settings(parameters):
    """The settings line of an A1111 "parameters" text as modules/infotext_utils.py splits it."""
    line = parameters.splitlines()[-1]
    out = {}
    for k, v in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line):
        out[k] = json.loads(v) if v.startswith('"') else v
    return out
