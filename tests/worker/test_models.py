"""test_models.py - bin/perflow-worker with models as users have them, end to end: a
single-file checkpoint with the configs of a diffusers folder, LoRAs, text-to-image
ControlNets with control images, an SDXL model with its second prompt and time ids, a
sharded diffusers folder, all fetched from nginx through the model cache. Each job's
images are compared with what `perflow generate` writes for the same settings; the warm
model LRU must load a model of its own for each LoRA set, and jobs with different LoRA
sets (or of different families) never share a batch. Bad inputs are rejected naming the
field."""
import os
import subprocess

import jsonschema

from conftest import BIN, BUCKET, ROOT, sha256
from test_worker import JOB_SCHEMA, assert_u8_close, check_statuses, png_rgb, png_size, png_text

MODELS = os.path.join(ROOT, "tests", "data", "models")
SINGLE = os.path.join(MODELS, "single-file", "tiny-sd15.safetensors")
SD15 = os.path.join(MODELS, "tiny-sd15")
DELTA = os.path.join(MODELS, "tiny-sd15-delta", "unet", "diffusion_pytorch_model.safetensors")
LORAS = os.path.join(MODELS, "loras")
GOLDENS = os.path.join(ROOT, "tests", "data", "goldens", "tiny-sd15")


def url(r, rel):
    return "http://127.0.0.1:%d/%s" % (r.nginx.port, rel)


def cli_images(r, args, seed, num_images=1, side=64):
    """The pixels `perflow generate` writes for args (model, LoRAs, ControlNets, prompts) and
    the settings of Rig.job: each image as png_rgb gives it."""
    out = os.path.join(r.dir, "cli-%s.png" % sha256(repr((args, seed, num_images, side)).encode())[:12])
    argv = [os.path.join(BIN, "perflow"), "generate", *args, "--seed", str(seed), "--width", str(side), "--height",
            str(side), "--steps", "4", "--guidance", "4.5", "--num-images", str(num_images), "--device", "cpu",
            "--threads", "1", "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as the worker runs
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    paths = [out] if num_images == 1 else [out[:-4] + "-%d.png" % i for i in range(num_images)]
    return [png_rgb(open(p, "rb").read()) for p in paths]


def job_images(r, job_id):
    """The job's images from S3, in index order, with their PNG text."""
    done = r.events.of(job_id, "succeeded")
    assert done, r.events.of(job_id)
    out = []
    for o in sorted(done[0]["outputs"], key=lambda o: o["index"]):
        data = r.object(o["url"][len("s3://%s/" % BUCKET):])
        assert sha256(data) == o["sha256"]
        out.append((png_rgb(data), png_text(data)))
    return out


def single_file_model(r, loras=()):
    m = {"base": {"url": url(r, "single-file/tiny-sd15.safetensors")}, "config": {"url": url(r, "tiny-sd15")},
         "delta": {"url": r.delta}}
    if loras:
        m["loras"] = [{"url": url(r, "loras/" + name), "scale": scale} for name, scale in loras]
    return m


def lora_args(loras):
    out = []
    for name, scale in loras:
        out += ["--lora", "%s:%s" % (os.path.join(LORAS, name), scale)]
    return out


def test_single_file_and_lora_sets_each_load_their_own_model(rig):
    """A single-file base with model.config, then the same base with two LoRAs (twice, another
    seed: one batch), then with another LoRA: each equals the CLI; each LoRA set is a model of
    its own (no reuse of fused weights), and different LoRA sets never share a batch."""
    r = rig(partitions=1)
    two = (("kohya-sd15.safetensors", 0.8), ("peft.safetensors", -0.5))
    other = (("diffusers.safetensors", 0.7),)
    jobs = [("lora-plain", (), 1), ("lora-two", two, 1), ("lora-two-again", two, 2), ("lora-other", other, 1)]
    for job_id, loras, seed in jobs:
        j = r.job(job_id, model=single_file_model(r, loras), seed=seed)
        jsonschema.validate(j, JOB_SCHEMA)
        r.produce(j)
    w = r.start_worker(PERFLOW_MAX_BATCH=4, PERFLOW_BATCH_WAIT_MS=300)
    ids = [j[0] for j in jobs]
    r.events.wait_terminal(ids, timeout=120)
    for job_id in ids:
        assert r.events.terminal(job_id)[0]["state"] == "succeeded", r.events.terminal(job_id)
    # consecutive jobs of one LoRA set share a batch; another set ends it
    batch = {i: r.events.of(i, "succeeded")[0]["batch_jobs"] for i in ids}
    assert batch == {"lora-plain": 1, "lora-two": 2, "lora-two-again": 2, "lora-other": 1}, batch
    starts = w.events("engine.start")
    assert [s["jobs"] for s in starts] == [1, 2, 1], starts
    # a model per LoRA set, loaded from the cache's files: three loads for four jobs
    loaded = w.events("model.loaded")
    assert [e["loras"] for e in loaded] == [0, 2, 1], loaded
    assert len({e["msg"] for e in loaded}) == 3
    assert all(e["family"] == "sd" for e in loaded)
    lora_lines = w.events("model.lora")
    assert {(e["field"], e["format"]) for e in lora_lines} >= {("model.loras[0]", "kohya"), ("model.loras[1]", "PEFT")}
    assert any(e["field"] == "model.loras[0]" for e in w.events("model.lora_unmatched"))  # kohya's dora_scale key
    base = ["--model", SINGLE, "--model-config", SD15, "--delta", DELTA, "--prompt", "a photo of a cat"]
    got = {i: job_images(r, i)[0] for i in ids}
    for job_id, loras, seed in jobs:
        (want,) = cli_images(r, base + lora_args(loras), seed)
        assert_u8_close(job_id, got[job_id][0], want)
    # the LoRAs took effect: no LoRA, two LoRAs and another LoRA give three different images
    pixels = {i: got[i][0][2] for i in ("lora-plain", "lora-two", "lora-other")}
    assert pixels["lora-plain"] != pixels["lora-two"] and pixels["lora-two"] != pixels["lora-other"] and \
        pixels["lora-plain"] != pixels["lora-other"], "two LoRA sets gave the same image"
    assert got["lora-two"][1]["loras"].startswith(url(r, "loras/kohya-sd15.safetensors") + ":0.8, ")
    check_statuses(r.events)


def test_controlnets_with_control_images_equal_the_cli(rig):
    """Two text-to-image ControlNets with their images, and a refine job with the tile and a
    text-to-image ControlNet (net 0 is the refiner's): the CLI's images."""
    r = rig(partitions=1)
    cn_a, cn_b = url(r, "tiny-sd15-controlnet"), url(r, "tiny-sd15-controlnet-b")
    control = [{"controlnet": {"url": cn_a}, "image": {"url": url(r, "images/control.png")}, "scale": 0.8},
               {"controlnet": {"url": cn_b}, "image": {"url": url(r, "images/control-b.png")}, "scale": 0.5}]
    j = r.job("cn-two", control=control, seed=4)
    jsonschema.validate(j, JOB_SCHEMA)
    r.produce(j)
    rj = r.refine_job("cn-refine", control=control[:1], seed=6)
    jsonschema.validate(rj, JOB_SCHEMA)
    r.produce(rj)
    w = r.start_worker()
    r.events.wait_terminal(["cn-two", "cn-refine"], timeout=120)
    for i in ("cn-two", "cn-refine"):
        assert r.events.terminal(i)[0]["state"] == "succeeded", r.events.terminal(i)
    base = ["--model", SD15, "--delta", DELTA, "--prompt", "a photo of a cat"]
    nets = ["--controlnet", os.path.join(MODELS, "tiny-sd15-controlnet") + ":0.8",
            "--control-image", os.path.join(GOLDENS, "refine-control-1-control-0.png")]
    nets_b = ["--controlnet", os.path.join(MODELS, "tiny-sd15-controlnet-b") + ":0.5",
              "--control-image", os.path.join(GOLDENS, "refine-control-2-control-1.png")]
    ((rgb, text),) = job_images(r, "cn-two")
    (want,) = cli_images(r, base + nets + nets_b, 4)
    assert_u8_close("cn-two", rgb, want)
    assert text["controlnets"] == "%s:0.8=%s, %s:0.5=%s" % (cn_a, url(r, "images/control.png"), cn_b,
                                                           url(r, "images/control-b.png"))
    ((rgb, _),) = job_images(r, "cn-refine")
    (want,) = cli_images(r, base + ["--refine", "--controlnet", os.path.join(MODELS, "tiny-sd15-controlnet"),
                                    "--refine-size", "128"] + nets, 6)
    assert rgb[:2] == (128, 128)
    assert_u8_close("cn-refine", rgb, want)
    # two sets of nets: attached once each
    assert len(w.events("model.controlnet_loaded")) == 2
    check_statuses(r.events)


def test_ip_adapters_equal_the_cli(rig):
    """A job with two image prompts (a plain IP-Adapter and a Plus one, the image encoder
    from its own folder URL pinned by its weights' digest) equals perflow generate's image;
    a second job with the same adapters reuses them (attached once); an adapter made for
    another UNet rejects its job naming ip_adapters[0].adapter."""
    r = rig(partitions=1)
    enc = {"url": url(r, "tiny-sd15/image_encoder"),
           "sha256": sha256(open(os.path.join(SD15, "image_encoder", "model.safetensors"), "rb").read())}
    ips = [{"adapter": {"url": url(r, "tiny-sd15-ip-adapter/ip-adapter.safetensors")},
            "image": {"url": url(r, "images/ip-0.png")}, "image_encoder": enc, "scale": 0.5},
           {"adapter": {"url": url(r, "tiny-sd15-ip-adapter/ip-adapter-plus.safetensors")},
            "image": {"url": url(r, "images/ip-1.png")}, "image_encoder": enc, "scale": 0.7}]
    jobs = [r.job("ip-two", ip_adapters=ips, seed=4), r.job("ip-two-again", ip_adapters=ips, seed=5),
            r.job("ip-misfit", ip_adapters=[dict(ips[0], adapter={
                "url": url(r, "tiny-sd15-ip-adapter/ip-adapter-x64.safetensors")})], seed=4)]
    for j in jobs:
        jsonschema.validate(j, JOB_SCHEMA)
        r.produce(j)
    w = r.start_worker()
    r.events.wait_terminal([j["job_id"] for j in jobs], timeout=120)
    base = ["--model", SD15, "--delta", DELTA, "--prompt", "a photo of a cat"]
    ip_args = ["--ip-adapter", os.path.join(MODELS, "tiny-sd15-ip-adapter", "ip-adapter.safetensors") + ":0.5",
               "--ip-image", os.path.join(GOLDENS, "ip-adapter-plain-and-plus-image-0.png"),
               "--ip-adapter", os.path.join(MODELS, "tiny-sd15-ip-adapter", "ip-adapter-plus.safetensors") + ":0.7",
               "--ip-image", os.path.join(GOLDENS, "ip-adapter-plain-and-plus-image-1.png")]
    got, text = {}, {}
    for job_id, seed in (("ip-two", 4), ("ip-two-again", 5)):
        ((got[job_id], text[job_id]),) = job_images(r, job_id)
        (want,) = cli_images(r, base + ip_args, seed)
        assert_u8_close(job_id, got[job_id], want)
    assert text["ip-two"]["ip_adapters"] == "%s:0.5=%s, %s:0.7=%s" % (
        ips[0]["adapter"]["url"], ips[0]["image"]["url"], ips[1]["adapter"]["url"], ips[1]["image"]["url"])
    assert text["ip-two"]["image_encoder"] == enc["url"]
    (plain,) = cli_images(r, base, 4)  # the image prompts change the image
    assert got["ip-two"] != plain
    assert len(w.events("model.ip_adapter_loaded")) == 1
    (ev,) = r.events.terminal("ip-misfit")
    assert ev["state"] == "rejected" and ev["error"]["code"] == "invalid_job", ev
    assert ev["error"]["field"] == "ip_adapters[0].adapter", ev
    assert "does not fit the model" in ev["error"]["message"], ev
    check_statuses(r.events)


def test_sdxl_ip_adapter_equals_the_cli(rig):
    """An SDXL job with prompt_2 and an image prompt (the tiny SDXL adapter, the tiny image
    encoder by URL) equals perflow generate's image."""
    r = rig(partitions=1)
    j = r.job("ip-xl", model={"base": {"url": url(r, "tiny-sdxl")}}, prompt="a red car", prompt_2="at night", seed=3,
              ip_adapters=[{"adapter": {"url": url(r, "tiny-sdxl-ip-adapter/ip-adapter.safetensors")},
                            "image": {"url": url(r, "images/ip-0.png")},
                            "image_encoder": {"url": url(r, "tiny-sd15/image_encoder")}, "scale": 0.8}])
    jsonschema.validate(j, JOB_SCHEMA)
    r.produce(j)
    r.start_worker()
    r.events.wait_terminal(["ip-xl"], timeout=120)
    ((rgb, _),) = job_images(r, "ip-xl")
    (want,) = cli_images(r, ["--model", os.path.join(MODELS, "tiny-sdxl"), "--prompt", "a red car", "--prompt-2",
                             "at night", "--ip-adapter",
                             os.path.join(MODELS, "tiny-sdxl-ip-adapter", "ip-adapter.safetensors") + ":0.8",
                             "--ip-image", os.path.join(GOLDENS, "ip-adapter-plain-and-plus-image-0.png"),
                             "--image-encoder", os.path.join(SD15, "image_encoder")], 3)
    assert_u8_close("ip-xl", rgb, want)
    check_statuses(r.events)


def test_sdxl_job_and_families_never_batched_together(rig):
    """An SDXL job with prompt_2 and the time ids, and one with an explicit empty negative
    prompt, equal the CLI's; SD and SDXL jobs arriving together run in batches of their own;
    a job without a size takes its family's (512 for SD)."""
    r = rig(partitions=1)
    sdxl = {"base": {"url": url(r, "tiny-sdxl")}}
    xl = r.job("xl-1", model=sdxl, prompt="a red car", prompt_2="at night", original_size=[96, 80],
               crop_coords=[8, 4], target_size=[64, 72], seed=3)
    jsonschema.validate(xl, JOB_SCHEMA)
    xl_neg = r.job("xl-neg", model=sdxl, prompt="a red car", negative_prompt="", negative_prompt_2="blurry", seed=3)
    sd = r.job("sd-default-size", steps=1, seed=3)
    del sd["width"], sd["height"]
    for j in (xl, sd, xl_neg):
        r.produce(j)
    w = r.start_worker(PERFLOW_MAX_BATCH=4, PERFLOW_BATCH_WAIT_MS=300)
    ids = ["xl-1", "sd-default-size", "xl-neg"]
    r.events.wait_terminal(ids, timeout=120)
    for i in ids:
        done = r.events.terminal(i)[0]
        assert done["state"] == "succeeded" and done["batch_jobs"] == 1, done
        assert done["timings"]["family"] == ("sd" if i == "sd-default-size" else "sdxl"), done
    assert [e["family"] for e in w.events("model.loaded")] == ["sdxl", "sd"]
    assert [s["jobs"] for s in w.events("engine.start")] == [1, 1, 1]
    xl_model = ["--model", os.path.join(MODELS, "tiny-sdxl"), "--prompt", "a red car"]
    ((rgb, text),) = job_images(r, "xl-1")
    (want,) = cli_images(r, xl_model + ["--prompt-2", "at night", "--original-size", "96,80", "--crop-coords", "8,4",
                                        "--target-size", "64,72"], 3)
    assert_u8_close("xl-1", rgb, want)
    assert (text["prompt_2"], text["original_size"], text["crop_coords"], text["target_size"]) == (
        "at night", "96x80", "8,4", "64x72")
    ((rgb_neg, _),) = job_images(r, "xl-neg")
    (want,) = cli_images(r, xl_model + ["--negative-prompt", "", "--negative-prompt-2", "blurry"], 3)
    assert_u8_close("xl-neg", rgb_neg, want)
    (none,) = cli_images(r, xl_model, 3)  # no negative prompt at all: zero embeddings, another image
    assert none[2] != want[2]
    ((rgb, _),) = job_images(r, "sd-default-size")
    assert rgb[:2] == (512, 512)
    check_statuses(r.events)


def test_sdxl_single_file_with_sdxl_loras(rig):
    """An SDXL single file (the original layout) with model.config, and the same with kohya's
    SDXL LoRA (original block numbering, lora_te1_/lora_te2_) and a PEFT one of the UNet and both
    text encoders: each equals the CLI; every LoRA tensor matched."""
    r = rig(partitions=1)
    two = (("sdxl-kohya.safetensors", 0.8), ("sdxl-peft.safetensors", -0.5))
    for job_id, loras in (("xl-single", ()), ("xl-single-loras", two)):
        m = {"base": {"url": url(r, "single-file/tiny-sdxl.safetensors")}, "config": {"url": url(r, "tiny-sdxl")}}
        if loras:
            m["loras"] = [{"url": url(r, "loras/" + name), "scale": scale} for name, scale in loras]
        j = r.job(job_id, model=m, prompt="a red boat", prompt_2="oil painting", seed=7)
        jsonschema.validate(j, JOB_SCHEMA)
        r.produce(j)
    w = r.start_worker()
    ids = ["xl-single", "xl-single-loras"]
    r.events.wait_terminal(ids, timeout=120)
    for i in ids:
        assert r.events.terminal(i)[0]["state"] == "succeeded", r.events.terminal(i)
    assert [e["family"] for e in w.events("model.loaded")] == ["sdxl", "sdxl"]
    assert {(e["field"], e["format"]) for e in w.events("model.lora")} == {("model.loras[0]", "kohya"),
                                                                             ("model.loras[1]", "PEFT")}
    assert not w.events("model.lora_unmatched")
    base = ["--model", os.path.join(MODELS, "single-file", "tiny-sdxl.safetensors"), "--model-config",
            os.path.join(MODELS, "tiny-sdxl"), "--prompt", "a red boat", "--prompt-2", "oil painting"]
    got = {i: job_images(r, i)[0][0] for i in ids}
    (want,) = cli_images(r, base, 7)
    assert_u8_close("xl-single", got["xl-single"], want)
    (want,) = cli_images(r, base + lora_args(two), 7)
    assert_u8_close("xl-single-loras", got["xl-single-loras"], want)
    assert got["xl-single"] != got["xl-single-loras"]  # the LoRAs took effect
    check_statuses(r.events)


def test_sdxl_controlnet_equals_the_cli(rig):
    """An SDXL job with an SDXL (text_time) ControlNet and its control image equals the CLI."""
    r = rig(partitions=1)
    control = [{"controlnet": {"url": url(r, "tiny-sdxl-controlnet")}, "image": {"url": url(r, "images/control.png")},
                "scale": 0.8}]
    j = r.job("xl-cn", model={"base": {"url": url(r, "tiny-sdxl")}}, prompt="a house by a lake", control=control,
              seed=12)
    jsonschema.validate(j, JOB_SCHEMA)
    r.produce(j)
    r.start_worker()
    r.events.wait_terminal(["xl-cn"], timeout=120)
    assert r.events.terminal("xl-cn")[0]["state"] == "succeeded", r.events.terminal("xl-cn")
    ((rgb, text),) = job_images(r, "xl-cn")
    base = ["--model", os.path.join(MODELS, "tiny-sdxl"), "--prompt", "a house by a lake"]
    (want,) = cli_images(r, base + ["--controlnet", os.path.join(MODELS, "tiny-sdxl-controlnet") + ":0.8",
                                    "--control-image", os.path.join(GOLDENS, "refine-control-1-control-0.png")], 12)
    assert_u8_close("xl-cn", rgb, want)
    (plain,) = cli_images(r, base, 12)
    assert plain != want  # the ControlNet took effect
    check_statuses(r.events)


def test_sharded_model_fetched_through_the_cache(rig):
    """A diffusers folder whose text encoder and VAE are sharded: the cache fetches each
    index and its shards; the job equals the CLI on the same folder."""
    r = rig()
    j = r.job("sharded-1", model={"base": {"url": url(r, "tiny-sd2-sharded")}}, seed=5)
    jsonschema.validate(j, JOB_SCHEMA)
    r.produce(j)
    r.start_worker()
    r.events.wait_terminal(["sharded-1"], timeout=90)
    assert r.events.terminal("sharded-1")[0]["state"] == "succeeded", r.events.terminal("sharded-1")
    log = open(r.nginx.access_log).read()
    for f in ("text_encoder/model.safetensors.index.json", "text_encoder/model-00002-of-00002.safetensors",
              "vae/diffusion_pytorch_model.safetensors.index.json",
              "vae/diffusion_pytorch_model-00004-of-00004.safetensors"):
        assert "GET /tiny-sd2-sharded/%s " % f in log, f
    ((rgb, _),) = job_images(r, "sharded-1")
    (want,) = cli_images(r, ["--model", os.path.join(MODELS, "tiny-sd2-sharded"), "--prompt", "a photo of a cat"], 5)
    assert_u8_close("sharded-1", rgb, want)


BAD = [  # (job id, change to Rig.job's fields or model, field, where it is found: "parse" or "model")
    ("mbad-lora-scale", {"loras": [("peft.safetensors", 0.5), ("kohya-sd15.safetensors", 11)]},
     "model.loras[1].scale", "parse"),
    ("mbad-lora-url", {"loras": [("kohya-sd15.bin", 1)]}, "model.loras[0].url", "parse"),
    ("mbad-lora-foreign", {"loras": [("bad-foreign.safetensors", 1)]}, "model.loras[0]", "model"),
    ("mbad-lora-sd2", {"loras": [("peft.safetensors", 1), ("kohya-sd2.safetensors", 1)]}, "model.loras[1]", "model"),
    ("mbad-original-size", {"original_size": [0, 512]}, "original_size", "parse"),
    ("mbad-crop", {"crop_coords": [-8, 0]}, "crop_coords", "parse"),
    ("mbad-prompt-2", {"prompt_2": "for SDXL only"}, "prompt_2", "model"),
    ("mbad-target-sd", {"target_size": [64, 64]}, "target_size", "model"),
    ("mbad-control-noimage", {"control": [{"controlnet": {"url": "CN"}}]}, "control[0].image", "parse"),
    ("mbad-control-notimage", {"control": [{"controlnet": {"url": "CN"}, "image": {"url": "NOTIMAGE"}}]},
     "control[0].image", "model"),
    ("mbad-config-diffusers", {"config": True}, "model.config", "parse"),
]


def test_bad_model_inputs_rejected_naming_the_field(rig):
    r = rig(partitions=1)
    for job_id, change, _, _ in BAD:
        j = r.job(job_id)
        for k, v in change.items():
            if k == "loras":
                j["model"]["loras"] = [{"url": url(r, "loras/" + n), "scale": s} for n, s in v]
            elif k == "config":
                j["model"]["config"] = {"url": r.model}
            elif k == "control":
                j["control"] = [{kk: {"url": {"CN": r.controlnet, "NOTIMAGE": url(r, "images/not-an-image.png")}[
                    vv["url"]]} for kk, vv in c.items()} for c in v]
            else:
                j[k] = v
        r.produce(j)
    # a single file whose architecture is not one the worker ships configs for, without model.config
    r.produce(r.job("mbad-single-noconfig", model={"base": {"url": url(r, "single-file/tiny-sd15.safetensors")}}))
    r.produce(r.job("mgood-after"))
    w = r.start_worker()
    ids = [b[0] for b in BAD] + ["mbad-single-noconfig", "mgood-after"]
    r.events.wait_terminal(ids, timeout=120)
    for job_id, _, field, where in BAD:
        (ev,) = r.events.terminal(job_id)
        assert ev["state"] == "rejected" and ev["error"]["code"] == "invalid_job", ev
        assert ev["error"]["field"] == field, ev
        assert bool(r.events.of(job_id, "accepted")) == (where == "model"), (job_id, r.events.of(job_id))
        assert "blobs/sha256" not in ev["error"]["message"] and "/models/" not in ev["error"]["message"], ev
    for job_id in ("mbad-lora-foreign", "mbad-lora-sd2"):  # the engine's message, the LoRA named by its URL
        msg = r.events.terminal(job_id)[0]["error"]["message"]
        assert msg.startswith("model.loras[") and url(r, "loras/") in msg, msg
    assert "none of its 4 tensors matches" in r.events.terminal("mbad-lora-foreign")[0]["error"]["message"]
    assert "does not fit" in r.events.terminal("mbad-lora-sd2")[0]["error"]["message"]
    assert url(r, "images/not-an-image.png") in r.events.terminal("mbad-control-notimage")[0]["error"]["message"]
    (ev,) = r.events.terminal("mbad-single-noconfig")  # the model itself does not load: failed, not retried
    assert ev["state"] == "failed" and ev["error"]["code"] == "model" and not ev["error"]["retryable"], ev
    assert "unknown architecture" in ev["error"]["message"] and url(r, "single-file/") in ev["error"]["message"]
    assert r.events.terminal("mgood-after")[0]["state"] == "succeeded"
    r.events.wait(lambda: len(r.events.dead) == len(BAD) + 1, 15, "%d dead letters" % (len(BAD) + 1))
    fields = sorted(h.get("perflow-error-field", "") for _, h in r.events.dead)
    assert fields == sorted([b[2] for b in BAD] + [""])
    check_statuses(r.events)
    assert w.proc.poll() is None
    assert png_size(r.object("mgood-after/0-7.png")) == (64, 64)
