"""Training mechanics on tiny models: end to end, exact resume after SIGKILL, DDP, bad data."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cogvlm_lite.data import BatchSampler, read_conversations
from cogvlm_lite.scenes import write_dataset
from cogvlm_lite.train import TrainConfig, train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    write_dataset(out, 8, seed=5, image_size=96)
    return out


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def metrics(run) -> dict[int, tuple[float, float]]:
    """Step -> (loss, learning rate) of a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["lr"]) for r in records if "loss" in r}


def losses(run) -> dict[int, float]:
    return {step: loss for step, (loss, _) in metrics(run).items()}


def cli_train(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cogvlm_lite", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_end_to_end_train_save_resume_evaluate(scenes, tiny_checkpoint, tmp_path):
    from cogvlm_lite import load_model

    run = tmp_path / "run"
    config = TrainConfig(data=str(scenes / "train.jsonl"), out=str(run), init_from=tiny_checkpoint,
                         eval_data=str(scenes / "questions.jsonl"), eval_limit=3, steps=3,
                         batch_size=4, save_every=2, warmup=1)
    last = train(config)
    assert last["step"] == 3 and last["loss"] > 0
    assert {"config.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "loss.png",
            "train_config.json", "eval-000003.jsonl"} <= set(os.listdir(run))
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in r and r["eval"]["overall"]["n"] == 3 for r in evals)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config)
    config.resume, config.steps = True, 4
    assert train(config)["step"] == 4
    assert sorted(losses(run)) == [1, 2, 3, 4]
    model = load_model(run, device="cpu")
    assert model.chat(str(scenes / "images" / "000000.png"), "Where is the dog?", max_new_tokens=3)


def test_killed_run_resumes_exactly(scenes, tiny_checkpoint, tmp_path):
    common = ["--data", str(scenes / "train.jsonl"), "--init-from", tiny_checkpoint,
              "--batch-size", "4", "--save-every", "2", "--warmup", "0", "--min-lr-ratio", "1",
              "--no-cache-features"]
    steady = tmp_path / "steady"
    train(TrainConfig(data=str(scenes / "train.jsonl"), out=str(steady), init_from=tiny_checkpoint,
                      batch_size=4, save_every=2, warmup=0, min_lr_ratio=1, cache_features=False,
                      steps=7))
    killed = tmp_path / "killed"
    proc = cli_train(*common, "--out", str(killed), "--steps", "1000")
    deadline = time.time() + 120
    while time.time() < deadline:
        if (killed / "train_state.pt").exists() and len(losses_or_empty(killed)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(losses_or_empty(killed)) < 1000
    resumed = cli_train(*common, "--out", str(killed), "--steps", "7", "--resume")
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert losses(killed) == losses(steady)


def test_a_run_in_legs_follows_the_whole_schedule(scenes, tiny_checkpoint, tmp_path):
    def run(out, **options):
        return train(TrainConfig(data=str(scenes / "train.jsonl"), out=str(tmp_path / out),
                                 init_from=tiny_checkpoint, batch_size=4, warmup=1, steps=5,
                                 **options))

    run("whole")
    assert run("legs", stop_at=3)["step"] == 3
    assert (tmp_path / "legs" / "train_state.pt").is_file()
    assert run("legs", resume=True)["step"] == 5
    whole, legs = (metrics(tmp_path / name) for name in ("whole", "legs"))
    assert legs == whole  # the same losses under the same learning rates
    assert len({lr for _, lr in whole.values()}) == 5  # warmup, then the cosine over 5 steps
    # a leg that would end where the run already is says so, and leaves the run as it was
    settings = (tmp_path / "legs" / "train_config.json").read_text()
    for options in ({"stop_at": 4}, {}):
        with pytest.raises(ValueError, match="already at step 5"):
            run("legs", resume=True, **options)
    assert (tmp_path / "legs" / "train_config.json").read_text() == settings


def losses_or_empty(run):
    try:
        return losses(run)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_two_process_ddp_matches_one_process(scenes, tiny_checkpoint, tmp_path):
    common = ["--data", str(scenes / "train.jsonl"), "--init-from", tiny_checkpoint,
              "--batch-size", "4", "--steps", "3", "--warmup", "1", "--no-bf16", "--device", "cpu"]
    single = cli_train(*common, "--out", str(tmp_path / "one"))
    _, err = single.communicate(timeout=180)
    assert single.returncode == 0, err
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", "-m", "cogvlm_lite", "train", *common,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() == {1, 2, 3}
    for step in one:  # same global batch, loss normalised by the global token count
        assert two[step] == pytest.approx(one[step], rel=1e-4)


def test_sampler_shares_and_resumes():
    full = BatchSampler(10, 4, seed=1)
    a, b = BatchSampler(10, 4, seed=1, rank=0, world=2), BatchSampler(10, 4, seed=1, rank=1, world=2)
    for _ in range(5):
        batch = full.next()
        assert sorted(a.next() + b.next()) == sorted(batch)
    again = BatchSampler(10, 4, seed=1)
    again.load_state_dict(full.state_dict())
    assert again.next() == full.next()


def test_length_groups_cut_padding_and_keep_the_data():
    lengths = [int(x) for x in np.random.default_rng(0).integers(10, 500, 200)]
    plain = BatchSampler(200, 8, seed=3)
    grouped = BatchSampler(200, 8, seed=3, lengths=lengths, groups=5)
    a = [plain.next() for _ in range(10)]
    b = [grouped.next() for _ in range(10)]
    for w in (0, 5):  # each window of 5 batches holds the same samples, regrouped
        assert sorted(sum(a[w:w + 5], [])) == sorted(sum(b[w:w + 5], []))

    def padded(batches):
        return sum(len(x) * max(lengths[i] for i in x) for x in batches)
    assert padded(b) < 0.75 * padded(a)
    again = BatchSampler(200, 8, seed=3, lengths=lengths, groups=5)
    again.load_state_dict({**grouped.state_dict(), "position": 3})
    assert again.next() == b[3]
    halves = [BatchSampler(200, 8, seed=3, rank=r, world=2, lengths=lengths, groups=5)
              for r in (0, 1)]
    assert sorted(halves[0].next() + halves[1].next()) == sorted(b[0])
    halves = BatchSampler(200, 4, seed=3, lengths=lengths, groups=5, micro_batches=2)
    for step in b[:6]:  # gradient accumulation: the same steps, each in two micro-batches
        assert sorted(halves.next() + halves.next()) == sorted(step)
    with pytest.raises(ValueError, match="length grouping changed.*--batch-size"):
        plain.load_state_dict(grouped.state_dict())
    with pytest.raises(ValueError, match="length grouping changed"):
        halves.load_state_dict(BatchSampler(200, 4, seed=3, lengths=lengths, groups=5).state_dict())
    assert BatchSampler(20, 8, seed=3, lengths=lengths[:20], groups=5).groups == 2  # one pass
    with pytest.raises(ValueError, match="needs the length of every sample"):
        BatchSampler(200, 8, seed=3, groups=5)


def test_bad_lines_name_the_file_and_line(tmp_path, scenes):
    good = (scenes / "train.jsonl").read_text().splitlines()[0]
    data = tmp_path / "train.jsonl"
    (tmp_path / "images").symlink_to(scenes / "images")
    data.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: not valid JSON"):
        read_conversations(data)
    assert len(read_conversations(data, skip_bad=True)) == 2
    data.write_text(json.dumps({"image": "images/missing.png", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(ValueError, match="line 1: image .*missing.png not found"):
        read_conversations(data)
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="end with an assistant reply"):
        read_conversations(data)


def test_data_files_that_are_folders_or_not_utf8_are_named(tmp_path, scenes):
    from cogvlm_lite.prealign import read_objects

    lines = (scenes / "train.jsonl").read_bytes().splitlines(keepends=True)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(lines[0] + lines[1].replace(b'"messages"', '"m\u00e9ssages"'.encode("latin-1")))
    for read in (read_conversations, read_objects):
        with pytest.raises(ValueError, match=r"latin.jsonl, line 2: not UTF-8 text; save the file as UTF-8"):
            read(latin)
        with pytest.raises(ValueError, match=r"is a folder; give the data file in it"):
            read(scenes)
    (tmp_path / "plain.jsonl").write_text(json.dumps({"objects": []}) + "\n")
    with pytest.raises(ValueError, match=r"plain.jsonl, line 1: needs 'image' and 'objects' fields"):
        read_objects(tmp_path / "plain.jsonl")


def test_llava_format(tmp_path, scenes):
    (tmp_path / "images").symlink_to(scenes / "images")
    record = {"image": "images/000000.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A dog."}]}
    (tmp_path / "llava.json").write_text(json.dumps([record]))
    [sample] = read_conversations(tmp_path / "llava.json")
    assert sample.messages == [{"role": "user", "content": "What is this?"},
                               {"role": "assistant", "content": "A dog."}]
    assert sample.image == tmp_path / "images" / "000000.png"
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([record]).encode())  # as Notepad saves
    assert read_conversations(tmp_path / "bom.json")[0].messages == sample.messages


def test_warm_start_at_another_image_size_stretches_the_grid_positions(scenes, tiny_checkpoint,
                                                                       tmp_path):
    from cogvlm_lite import load_model
    from cogvlm_lite.adapter import resize_positions

    base = load_model(tiny_checkpoint, device="cpu")
    wide = load_model(tiny_checkpoint, device="cpu", image_size=128)
    rows, cols = base.adapter.grid
    assert wide.adapter.grid == (2 * rows, 2 * cols) and wide.config.vision.image_size == 128
    row = base.adapter.row_embed.detach()
    stretched = wide.adapter.row_embed.detach()
    assert torch.equal(stretched, resize_positions(row, 2 * rows))
    assert torch.allclose(stretched[0], row[0]) and torch.allclose(stretched[-1], row[-1])
    same = {k: v for k, v in base.trainable_state_dict().items() if "_embed" not in k}
    assert all(torch.equal(v, wide.trainable_state_dict()[k]) for k, v in same.items())

    run = tmp_path / "wide"
    train(TrainConfig(data=str(scenes / "train.jsonl"), out=str(run), init_from=tiny_checkpoint,
                      image_size=128, steps=1, batch_size=2, save_every=0, device="cpu"))
    assert load_model(run, device="cpu").adapter.grid == (2 * rows, 2 * cols)


@pytest.mark.parametrize("option", [{"rank": 8}, {"expert": "full"}])
def test_warm_start_refuses_another_expert(scenes, tiny_checkpoint, tmp_path, option):
    config = TrainConfig(data=str(scenes / "train.jsonl"), out=str(tmp_path / "run"),
                         init_from=tiny_checkpoint, steps=1, batch_size=2, device="cpu", **option)
    with pytest.raises(ValueError, match="--init-from"):
        train(config)


def test_prealignment_pulls_cells_towards_object_names(scenes, tiny_model, tiny_checkpoint,
                                                       tmp_path):
    from cogvlm_lite.data import ConversationData, encode_images
    from cogvlm_lite.prealign import BACKGROUND, cell_labels, prealign, probe, read_objects

    assert cell_labels([{"name": "dog", "box": [0.0, 0.0, 0.5, 0.5]}], (2, 2)) == [
        "dog", BACKGROUND, BACKGROUND, BACKGROUND]
    data = ConversationData(read_conversations(scenes / "train.jsonl"), tiny_model.builder,
                            tiny_model.adapter.num_tokens)
    features = encode_images(tiny_model, data.images)
    objects = read_objects(scenes / "train.jsonl")
    first = prealign(tiny_model, objects, data.images, features, epochs=1)
    later = prealign(tiny_model, objects, data.images, features, epochs=30)
    assert later > first
    after = probe(tiny_model, objects, data.images, features)
    assert after["all"]["n"] == sum(len(objects[p]) for p in data.images)
    assert after["all"]["n"] == sum(after[size]["n"] for size in ("small", "medium", "large"))

    run = tmp_path / "prealigned"  # as the first stage of a training run
    train(TrainConfig(data=str(scenes / "train.jsonl"), out=str(run), init_from=tiny_checkpoint,
                      prealign_epochs=1, steps=1, batch_size=2, save_every=0, device="cpu"))
    assert (run / "model.safetensors").is_file()


def test_probe_names_and_points_from_the_cells_word_choice(tiny_model, monkeypatch):
    from cogvlm_lite.prealign import name_tokens, probe

    adapter = tiny_model.adapter
    image = "scene.png"
    objects = {image: [{"name": "dog", "box": [0.0, 0.0, 0.5, 0.5]},
                       {"name": "cat", "box": [0.5, 0.5, 1.0, 1.0]}]}
    words = sorted({t for ids in name_tokens(tiny_model.tokenizer, ["background", "cat", "dog"])
                    for t in ids})
    dog = [words.index(t) for t in name_tokens(tiny_model.tokenizer, ["dog"])[0]]
    # Cells are word logits as they are: the top-left and bottom-right cells both read "dog".
    cells = torch.zeros(1, len(words), 2, 2)
    cells[0, dog, 0, 0] = cells[0, dog, 1, 1] = 10.0
    monkeypatch.setattr(adapter, "grid", (2, 2))
    monkeypatch.setattr(adapter, "project", lambda f: f.flatten(2).transpose(1, 2))
    monkeypatch.setattr(adapter, "word_logits", lambda x, vocabulary: x)
    result = probe(tiny_model, objects, [image], cells)
    # The dog is named and found; the cat is called a dog, and no cell points at it.
    assert result["large"] == result["all"] == {"n": 2, "naming": 0.5, "pointing": 0.5}
    assert result["small"] == {"n": 0, "naming": None, "pointing": None}


def test_packing_merges_conversations_per_image(scenes):
    from cogvlm_lite.data import pack_by_image

    samples = read_conversations(scenes / "train.jsonl")
    packed = pack_by_image(samples, max_turns=24)
    assert len(packed) < len(samples)
    assert sum(len(s.messages) for s in packed) == sum(len(s.messages) for s in samples)
    assert all(s.messages[0]["role"] == "user" and s.messages[-1]["role"] == "assistant"
               for s in packed)


def test_config_file_with_flag_overrides(scenes, tiny_checkpoint, tmp_path):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"data": str(scenes / "train.jsonl"), "out": str(tmp_path / "run"),
                                  "init_from": tiny_checkpoint, "steps": 5, "batch_size": 2,
                                  "pack": True}))
    proc = cli_train("--config", str(config), "--steps", "2")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["steps"] == 2 and saved["pack"] is True and saved["batch_size"] == 2
    config.write_text(json.dumps({"data": "x", "no_such_option": 1}))
    proc = cli_train("--config", str(config))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "no_such_option" in err


def test_minutes_shorten_the_schedule_so_it_still_decays(scenes, tiny_checkpoint, tmp_path,
                                                         monkeypatch):
    import itertools

    import cogvlm_lite.train

    ticks = itertools.count()
    monkeypatch.setattr(cogvlm_lite.train, "clock", lambda: 0.5 * next(ticks))  # 1.5 s a step
    run = tmp_path / "run"
    last = train(TrainConfig(data=str(scenes / "train.jsonl"), out=str(run),
                             init_from=tiny_checkpoint, steps=100_000, minutes=0.5, batch_size=2,
                             warmup=2, lr=1e-3, min_lr_ratio=0.1, save_every=0))
    assert 10 <= last["step"] <= 20  # 30 s of 1.5 s steps, planned with a margin
    assert last["lr"] == pytest.approx(1e-4)  # the cosine decay ran to its end
    assert sorted(losses(run)) == list(range(1, last["step"] + 1))
    assert (run / "model.safetensors").is_file() and (run / "train_state.pt").is_file()


def test_gradient_accumulation_matches_one_big_batch(scenes, tiny_checkpoint, tmp_path):
    runs = {}
    for accum in (1, 2):
        config = TrainConfig(data=str(scenes / "train.jsonl"), out=str(tmp_path / f"a{accum}"),
                             init_from=tiny_checkpoint, steps=3, batch_size=4, grad_accum=accum,
                             warmup=1, bf16=False, save_every=0)
        train(config)
        runs[accum] = losses(tmp_path / f"a{accum}")
    for step, loss in runs[1].items():
        assert runs[2][step] == pytest.approx(loss, rel=1e-4)


@pytest.mark.weights
def test_answers_learn_to_depend_on_the_image(tmp_path):
    """Four one-object scenes, one question: after a short run each answer is far more likely
    under its own image than under the others (only the image tells them apart)."""
    import numpy as np
    import torch

    from cogvlm_lite import load_model
    from cogvlm_lite.conversation import as_messages
    from cogvlm_lite.scenes import make_scene

    (tmp_path / "img").mkdir()
    lines, names = [], []
    for i in range(4):
        scene = make_scene(np.random.default_rng([7, i]), 128, objects=(1, 1))
        scene.image.save(tmp_path / "img" / f"{i}.png")
        names.append(f"A {scene.objects[0].name}.")
        lines.append(json.dumps({"image": f"img/{i}.png", "messages": [
            {"role": "user", "content": "What is in the image?"},
            {"role": "assistant", "content": names[-1]}]}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    train(TrainConfig(data=str(tmp_path / "data.jsonl"), out=str(tmp_path / "run"), steps=25,
                      batch_size=4, lr=2e-3, adapter_lr=4e-3, warmup=3, save_every=0,
                      device="cpu", image_size=128))
    model = load_model(tmp_path / "run", device="cpu")

    def loss(answer, image):
        enc = model.builder.encode(as_messages([("What is in the image?", answer)]),
                                   image_tokens=model.adapter.num_tokens, generation_prompt=False)
        with torch.no_grad():
            return float(model(input_ids=torch.tensor([enc.input_ids]),
                               labels=torch.tensor([enc.labels]),
                               images=[tmp_path / "img" / f"{image}.png"]).loss)

    for i, answer in enumerate(names):
        own = loss(answer, i)
        others = [loss(answer, j) for j in range(4) if j != i]
        assert own + 0.3 < min(others), (answer, own, others)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_only_where_the_cpu_runs_bf16_products_natively(scenes, tiny_checkpoint,
                                                                       tmp_path, monkeypatch,
                                                                       caplog, native):
    import cogvlm_lite.train as train_module

    monkeypatch.setattr(train_module, "onednn_bf16", lambda: native)
    config = dict(data=str(scenes / "train.jsonl"), init_from=tiny_checkpoint, steps=1,
                  batch_size=2, save_every=0, device="cpu")
    with caplog.at_level("INFO", logger="cogvlm_lite.train"):
        train(TrainConfig(out=str(tmp_path / "auto"), **config))
        assert ("training in bf16 autocast" if native else "training in fp32") in caplog.text
        caplog.clear()
        train(TrainConfig(out=str(tmp_path / "asked"), bf16=True, **config))
    assert "training in bf16 autocast" in caplog.text
    assert ("no native bf16" in caplog.text) is not native


def small_run(scenes, checkpoint, out, **options) -> TrainConfig:
    """A few steps of the tiny model on the scenes, saved only at the end unless asked."""
    settings = dict(data=str(scenes / "train.jsonl"), out=str(out), init_from=checkpoint, steps=3,
                    batch_size=2, warmup=1, save_every=0, device="cpu")
    return TrainConfig(**(settings | options))


def interrupt_during_step(monkeypatch, step: int) -> None:
    """Press Ctrl-C (SIGINT to this process) while training step `step` runs."""
    from cogvlm_lite.train import Trainer

    original = Trainer.train_step

    def train_step(self):
        if self.step + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_ctrl_c_saves_the_step_reached_and_the_run_resumes_from_it(scenes, tiny_checkpoint, tmp_path,
                                                                    monkeypatch, caplog):
    from cogvlm_lite.cli import main

    steady, run = tmp_path / "steady", tmp_path / "run"
    train(small_run(scenes, tiny_checkpoint, steady, steps=5))
    interrupt_during_step(monkeypatch, 3)
    options = ["--data", str(scenes / "train.jsonl"), "--out", str(run), "--init-from", tiny_checkpoint,
               "--steps", "5", "--batch-size", "2", "--warmup", "1", "--save-every", "100",
               "--device", "cpu"]
    with caplog.at_level("INFO", logger="cogvlm_lite.train"):
        assert main(["train", *options]) == 130
    assert f"stopped at step 3; saved in {run}; continue with --resume" in caplog.text
    assert torch.load(run / "train_state.pt", weights_only=False)["step"] == 3
    assert (run / "model.safetensors").is_file() and sorted(losses(run)) == [1, 2, 3]
    assert (run / "loss.png").is_file()
    monkeypatch.undo()
    assert train(small_run(scenes, tiny_checkpoint, run, steps=5, resume=True))["step"] == 5
    assert losses(run) == losses(steady)


def test_ctrl_c_before_the_first_step_saves_nothing_and_the_folder_stays_free(scenes, tiny_checkpoint,
                                                                              tmp_path, monkeypatch):
    import cogvlm_lite.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "encode_images", interrupted)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(small_run(scenes, tiny_checkpoint, run))
    assert not (run / "train_state.pt").exists() and not (run / "model.safetensors").exists()
    monkeypatch.undo()
    assert train(small_run(scenes, tiny_checkpoint, run))["step"] == 3  # no --force needed


def test_a_second_ctrl_c_stops_at_once(scenes, tiny_checkpoint, tmp_path, monkeypatch):
    from cogvlm_lite.train import Trainer

    original = Trainer.train_step

    def train_step(self):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(small_run(scenes, tiny_checkpoint, run, steps=5, save_every=100))
    assert sorted(losses(run)) == [1] and not (run / "train_state.pt").exists()
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.parametrize("option, message", [
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"grad_accum": 0}, "--grad-accum must be at least 1, got 0"),
    ({"steps": 0}, "--steps must be at least 1, got 0"),
    ({"steps": -5}, "--steps must be at least 1, got -5"),
    ({"steps": None}, "--steps must be a whole number, got None"),
    ({"minutes": -1.0}, "--minutes must be above 0 (or 0 for no limit), got -1.0"),
    ({"lr": float("nan")}, "--lr must be a finite number above 0, got nan"),
    ({"adapter_lr": 0.0}, "--adapter-lr must be a finite number above 0, got 0.0"),
    ({"rank": 0}, "--rank must be at least 1, got 0"),
    ({"image_size": 16}, "--image-size must be at least 32, got 16"),
    ({"image_size": 32, "downsample": True}, "--image-size must be at least 64 with --downsample"),
    ({"image_size": 2048}, "--image-size must be at most 1536, got 2048"),  # its checkpoint would not load
])
def test_bad_numbers_are_refused_naming_the_option(tmp_path, option, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(data="train.jsonl", out=str(tmp_path / "run"), **option)


def test_bad_numbers_stop_the_command_before_it_writes(scenes, tiny_checkpoint, tmp_path, capsys):
    from cogvlm_lite.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(scenes / "train.jsonl"), "--out", str(run),
                 "--batch-size", "0"]) == 1
    assert "cogvlm-lite train: --batch-size must be at least 1, got 0" in capsys.readouterr().err
    config = small_run(scenes, tiny_checkpoint, run)
    config.steps = 0  # a configuration changed after it was made is checked again
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        train(config)
    assert not run.exists()


@pytest.mark.parametrize("key, value, expected", [
    ("steps", None, "a whole number"), ("pack", "no", "true or false"), ("lr", "fast", "a number"),
    ("batch_size", 2.5, "a whole number"), ("data", 3, "a string"), ("skip_bad", 1, "true or false"),
])
def test_config_file_values_must_fit_their_option(tmp_path, key, value, expected):
    from cogvlm_lite.cli import build_parser, load_options

    _, parser = build_parser()
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"data": "train.jsonl", "out": "run", key: value}))
    with pytest.raises(ValueError, match=re.escape(f'--config {config}: "{key}" must be {expected}')):
        load_options(str(config), parser)
    config.write_text(json.dumps({"data": "train.jsonl", "rank": None, "bf16": None, "lr": 1,
                                  "pack": True, "eval_data": None}))
    assert load_options(str(config), parser)["lr"] == 1
    config.write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        load_options(str(config), parser)


def poison_weights(trainer) -> None:
    with torch.no_grad():
        trainer.model.adapter.linear.weight.fill_(float("nan"))


def test_a_nan_loss_stops_training_and_keeps_the_last_good_weights(scenes, tiny_checkpoint, tmp_path,
                                                                    monkeypatch):
    from safetensors.torch import load_file

    from cogvlm_lite.train import Trainer

    original = Trainer.train_step

    def poisoned_before_step_3(self):
        if self.step == 2:
            poison_weights(self)
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", poisoned_before_step_3)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"the loss became nan at step 3; the last good weights "
                                           r"were saved at step 2 in .*; try a lower --lr"):
        train(small_run(scenes, tiny_checkpoint, run, steps=5, save_every=2))
    assert torch.load(run / "train_state.pt", weights_only=False)["step"] == 2
    assert all(torch.isfinite(v).all() for v in load_file(run / "model.safetensors").values())
    assert sorted(losses(run)) == [1, 2]

    def poisoned_after_step_1(self):
        out = original(self)
        poison_weights(self)
        return out

    monkeypatch.setattr(Trainer, "train_step", poisoned_after_step_1)
    with pytest.raises(RuntimeError, match=r"the weights became NaN or infinite at step 1; nothing "
                                           r"was saved"):
        train(small_run(scenes, tiny_checkpoint, tmp_path / "first", save_every=1))
    assert not (tmp_path / "first" / "model.safetensors").exists()


def test_a_failed_start_leaves_the_folder_free_and_the_old_run_whole(scenes, tiny_checkpoint, tmp_path):
    good = (scenes / "train.jsonl").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.replace("\n", "\n{not json\n", 1))
    (tmp_path / "images").symlink_to(scenes / "images")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        train(small_run(scenes, tiny_checkpoint, run, data=str(bad)))
    assert not run.exists()
    train(small_run(scenes, tiny_checkpoint, run))  # the retry needs no --force
    saved = {name: (run / name).read_bytes() for name in ("model.safetensors", "train_state.pt")}
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        train(small_run(scenes, tiny_checkpoint, run, data=str(bad), force=True))
    assert {name: (run / name).read_bytes() for name in saved} == saved


def test_skip_bad_skips_corrupt_images_and_overlong_conversations(scenes, tiny_checkpoint, tmp_path,
                                                                  caplog):
    (tmp_path / "images").symlink_to(scenes / "images")
    (tmp_path / "cut.png").write_bytes((scenes / "images" / "000000.png").read_bytes()[:300])
    good = (scenes / "train.jsonl").read_text().splitlines()[:4]
    corrupt = {"image": "cut.png", "messages": [{"role": "user", "content": "What is this?"},
                                                 {"role": "assistant", "content": "A dog."}]}
    overlong = {"messages": [{"role": "user", "content": "Where is the dog? " * 400},
                             {"role": "assistant", "content": "Left."}]}
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join([*good, json.dumps(corrupt), json.dumps(overlong)]) + "\n")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"train.jsonl, line 5: image file .*cut.png.* truncated "
                                         r"or corrupt.*pass --skip-bad"):
        train(small_run(scenes, tiny_checkpoint, run, data=str(data)))
    data.write_text("\n".join([*good, json.dumps(overlong)]) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl, line 5: the conversation is too long.*"
                                         r"pass --skip-bad"):
        train(small_run(scenes, tiny_checkpoint, run, data=str(data)))
    assert not run.exists()
    data.write_text("\n".join([*good, json.dumps(corrupt), json.dumps(overlong)]) + "\n")
    with caplog.at_level("WARNING"):
        assert train(small_run(scenes, tiny_checkpoint, run, data=str(data), skip_bad=True))["step"] == 3
    assert re.search(r"skipped .*train.jsonl, line 5: image file .*cut.png", caplog.text)
    assert re.search(r"skipped .*train.jsonl, line 6: the conversation is too long", caplog.text)


def test_eval_data_is_checked_before_training(scenes, tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="--eval-data .*missing.jsonl not found"):
        train(small_run(scenes, tiny_checkpoint, run, eval_data=str(tmp_path / "missing.jsonl")))
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": 1, "image": "nope.png", "question": "What?"}) + "\n")
    with pytest.raises(ValueError, match=r"--eval-data .*questions.jsonl, question 1: image file not "
                                         r"found: .*nope.png"):
        train(small_run(scenes, tiny_checkpoint, run, eval_data=str(questions)))
    assert not run.exists()


def test_resume_refuses_a_folder_with_weights_but_no_training_state(scenes, tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run)
    weights = (run / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"holds weights \(model.safetensors\) but no training state"
                                         r".*--init-from .*--force"):
        train(small_run(scenes, tiny_checkpoint, run, resume=True))
    assert (run / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("content", [b"", b"not a training state"])
def test_a_damaged_training_state_is_named_in_one_clear_line(scenes, tiny_checkpoint, tmp_path,
                                                              content):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run)
    (run / "train_state.pt").write_bytes(content)
    with pytest.raises(ValueError) as refused:
        train(small_run(scenes, tiny_checkpoint, run, resume=True))
    message = str(refused.value)
    assert re.fullmatch(r"\S*train_state.pt is damaged and cannot be read \(\w+\); start over "
                        r"with --force", message), message


def test_a_run_folder_another_run_is_writing_is_refused_untouched(scenes, tiny_checkpoint, tmp_path):
    from cogvlm_lite.model import exclusive

    run = tmp_path / "run"
    train(small_run(scenes, tiny_checkpoint, run))
    saved = {p.name: p.read_bytes() for p in run.iterdir()}
    for options in ({"resume": True, "steps": 5}, {"force": True}):
        with exclusive(run, "held"):  # as a training run writing it holds it
            with pytest.raises(ValueError, match=f"another training run is writing {run}; wait"):
                train(small_run(scenes, tiny_checkpoint, run, **options))
        assert {p.name: p.read_bytes() for p in run.iterdir()} == saved
    assert train(small_run(scenes, tiny_checkpoint, run, resume=True, steps=5))["step"] == 5


def test_what_only_the_model_or_data_can_tell_is_checked_before_the_run_folder_is_touched(
        scenes, tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="--prealign-epochs needs cached encoder features"):
        train(small_run(scenes, tiny_checkpoint, run, prealign_epochs=1, cache_features=False))
    llava = tmp_path / "llava.json"  # conversations, but no object boxes to pre-align on
    (tmp_path / "images").symlink_to(scenes / "images")
    first = json.loads((scenes / "train.jsonl").read_text().splitlines()[0])
    llava.write_text(json.dumps([{"image": first["image"], "conversations": [
        {"from": "human", "value": "<image>\nWhat is here?"}, {"from": "gpt", "value": "A dog."}]}]))
    with pytest.raises(ValueError, match="needs 'image' and 'objects' fields"):
        train(small_run(scenes, tiny_checkpoint, run, data=str(llava), prealign_epochs=1))
    assert not run.exists()

    train(small_run(scenes, tiny_checkpoint, run))
    saved = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ValueError, match="saved with another model configuration"):
        train(small_run(scenes, tiny_checkpoint, run, resume=True, steps=5, image_size=128))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == saved  # train_config.json too
