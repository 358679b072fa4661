"""`compress search`: the space validates and expands as declared, trial recipes score validation only, a killed
search resumes without repeating finished trials, best/ always meets the budget, the test split is read only
after the choice, bad search blocks are one line and exit 2, and bench workers set their own wait policy."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from compress.core.errors import CompressError
from compress.pipeline.recipe import apply_settings, expand_space, load_recipe, parse_recipe, space_size

# A config-built CNN on 128 digits: channel pruning (with a tiny recovery) then ONNX. Sparsity 0.9 costs about
# 6 pt of validation accuracy, 0.25 and 0.5 cost none: a 3 pt budget separates them.
TINY = {
    "name": "tiny-search",
    "model": "tiny:cnn",
    "data": {"source": "builtin:digits", "train": {"split": "train", "limit": 128},
             "validation": {"split": "validation", "limit": 64}, "eval": {"split": "test", "limit": 96}},
    "stages": [
        {"name": "base-onnx", "from": "model", "pass": {"type": "export_onnx"}},
        {"name": "prune", "from": "model", "pass": {"type": "prune_structured", "unit": "channels", "sparsity": 0.25,
                                                    "recover": {"max_steps": 1, "batch_size": 32}}},
        {"name": "onnx", "pass": {"type": "export_onnx"}},
    ],
    "baselines": ["base-onnx"],
    "eval": {"latency": {"batch_sizes": [1], "seq_lens": [1], "warmup": 1, "iters": 4, "rounds": 2, "threads": 1,
                         "isolate": False}},
    "search": {"space": {"prune.sparsity": [0.25, 0.5, 0.9]}, "objective": "size", "max_accuracy_drop": 0.03,
               "trials": 4, "sampler": "random", "finalists": 2},
}


def tiny(**search) -> dict:
    data = copy.deepcopy(TINY)
    data["search"].update(search)
    return data


def write(tmp_path, data: dict):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(data: dict) -> str:
    with pytest.raises(CompressError) as info:
        parse_recipe(data, "r.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the space -----------------------------------------------------------------------------------------------


def test_space_expands_as_declared():
    # setup
    recipe = parse_recipe(tiny(space={"prune.sparsity": [0.25, 0.5], "prune.recover.max_steps": [1, 2, 3],
                                      "prune.enabled": [True, False]}))
    # execute
    grid = expand_space(recipe.search)
    # assert
    assert space_size(recipe.search) == len(grid) == 12
    assert grid[0] == {"prune.sparsity": 0.25, "prune.recover.max_steps": 1, "prune.enabled": True}
    assert grid[-1] == {"prune.sparsity": 0.5, "prune.recover.max_steps": 3, "prune.enabled": False}
    assert len({json.dumps(g, sort_keys=True) for g in grid}) == 12


def test_settings_reach_the_pass_and_a_skipped_stage_hands_over_its_input():
    recipe = parse_recipe(tiny())
    data = apply_settings(recipe, {"prune.sparsity": 0.5, "prune.recover.epochs": 0.5})
    prune = next(s for s in data["stages"] if s["name"] == "prune")
    assert prune["pass"]["sparsity"] == 0.5 and prune["pass"]["recover"]["epochs"] == 0.5
    assert "search" not in data
    skipped = parse_recipe(apply_settings(recipe, {"prune.enabled": False}))
    assert [s.name for s in skipped.stages] == ["base-onnx", "onnx"]
    assert skipped.inputs()["onnx"] == "model"


def test_trial_recipe_scores_validation_only_and_keeps_the_candidates_stages():
    from compress.pipeline.trial import trial_recipe

    recipe = parse_recipe(tiny(fidelity={"validation_limit": 16, "overrides": {"prune.recover.max_steps": 2}}))
    full = trial_recipe(recipe, {"prune.sparsity": 0.5})
    low = trial_recipe(recipe, {"prune.sparsity": 0.5}, fidelity="low")
    final = trial_recipe(recipe, {"prune.sparsity": 0.5}, split="eval", targets=["onnx", "base-onnx"])
    # selection never names the test split, and times nothing (the search times candidates itself)
    assert full.data.eval.split == "validation" and full.data.eval.limit == 64
    assert low.data.eval.split == "validation" and low.data.eval.limit == 16
    assert [s.name for s in full.stages] == ["prune", "onnx"] and full.eval.latency is None
    assert [s.evaluate for s in full.stages] == [False, True] and full.search is None
    assert full.stage("prune").pass_.sparsity == 0.5 and full.stage("prune").pass_.recover.max_steps == 1
    assert low.stage("prune").pass_.recover.max_steps == 2
    assert final.data.eval.split == "test" and final.baselines == ["base-onnx"]


def test_the_shipped_search_recipe_validates():
    from pathlib import Path

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "minilm-sst2-search.yaml")
    assert recipe.search is not None and space_size(recipe.search) >= 8
    assert recipe.search.max_accuracy_drop is not None


# --- bad search blocks: one line, exit 2 -------------------------------------------------------------------------


@pytest.mark.parametrize("change, expected", [
    ({"space": {"nostage.sparsity": [0.5]}}, "search.space.nostage.sparsity: 'nostage.sparsity' does not start with a stage"),
    ({"space": {"prune.sparsity": [0.5, 1.5]}}, "search.space.prune.sparsity[1]: 1.5 does not fit stage 'prune'"),
    ({"space": {"prune.sparsityy": [0.5]}}, "search.space.prune.sparsityy[0]: 0.5 does not fit stage 'prune' (stages[1].pass.sparsityy: unknown key)"),
    ({"space": {"base-onnx.opset": [17]}}, "stage 'base-onnx' does not lead to the candidate 'onnx'"),
    ({"space": {"onnx.enabled": [True, False]}}, "the candidate stage cannot be skipped"),
    ({"space": {"prune.sparsity": []}}, "give at least one value"),
    ({"max_accuracy_drop": None}, "give exactly one budget"),
    ({"max_perplexity_increase": 0.05}, "give exactly one budget"),
    ({"candidate": "base-onnx"}, "search.candidate: 'base-onnx' is a baseline"),
    ({"candidate": "nope"}, "search.candidate: 'nope' is not a stage"),
    ({"trials": 0}, "search.trials"),
    ({"objectiv": "size"}, "search.objectiv: unknown key"),
    ({"fidelity": {"overrides": {"prune.recover.max_stepz": 1}}}, "search.fidelity.overrides.prune.recover.max_stepz"),
])
def test_bad_search_block_is_one_line(change, expected):
    assert expected in error_of(tiny(**change))


def test_search_needs_a_validation_split():
    data = tiny()
    del data["data"]["validation"]
    assert "candidates are chosen on data.validation" in error_of(data)


@pytest.mark.parametrize("command", ["search", "run"])
def test_bad_search_block_exits_2_from_the_cli(cli, tmp_path, command):
    result = cli([command, write(tmp_path, tiny(space={"prune.sparsity": [2.0]})), "--dry-run"])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "search.space.prune.sparsity[0]" in lines[0]


def test_search_of_a_recipe_without_a_search_block_exits_2(cli, tmp_path):
    data = tiny()
    del data["search"]
    result = cli(["search", write(tmp_path, data), "--dry-run"])
    assert result.exit_code == 2 and "no search block" in result.output


def test_dry_run_prints_the_space(cli, tmp_path):
    result = cli(["search", write(tmp_path, tiny()), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "prune.sparsity" in result.output and "3 settings" in result.output and "is valid" in result.output


# --- running searches --------------------------------------------------------------------------------------------


def _check_best(folder, study_rows: list[dict]) -> dict:
    """best/ holds a loadable model that meets the budget and is the best feasible trial so far."""
    from compress.models.load import load_model
    from compress.pipeline.study import read_best

    best = read_best(folder)
    assert best is not None
    assert best["figures"]["violation"] <= 0
    feasible = [r for r in study_rows if r["feasible"]]
    assert best["figures"]["objective"] == min(r["full"]["objective"] for r in feasible)
    load_model(str(folder / "best" / best["model"]))
    return best


def test_killed_search_resumes_without_repeating_finished_trials(tmp_path, monkeypatch, one_thread):
    from optuna.trial import TrialState

    from compress.pipeline import search as lib
    from compress.pipeline import trial as trials

    # setup: the third trial is interrupted (Ctrl-C) in the middle
    recipe = parse_recipe(tiny())
    real, calls = trials.score, []

    def interrupted(ctx, settings, fidelity):
        calls.append(settings)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(ctx, settings, fidelity)

    monkeypatch.setattr(trials, "score", interrupted)
    # execute
    with pytest.raises(KeyboardInterrupt):
        lib.search(recipe, runs_dir=tmp_path, finalize=False)
    folder = lib.search_dir(recipe, tmp_path)
    study = lib.open_study(recipe, folder)
    before = {t.number: (t.state, t.datetime_complete) for t in study.get_trials()}
    # assert: two finished trials, one interrupted; best/ is usable meanwhile
    assert [s for s, _ in before.values()] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    _check_best(folder, [r for r in lib.trial_rows(study) if r["state"] == "complete"])
    # execute: resume
    calls.clear()
    monkeypatch.setattr(trials, "score", lambda ctx, settings, fidelity: calls.append(settings) or real(ctx, settings, fidelity))
    results = lib.search(recipe, runs_dir=tmp_path, finalize=False)
    # assert: only the interrupted trial (first, same settings) and the remaining one ran
    assert len(calls) == 2
    after = {t.number: (t.state, t.datetime_complete) for t in lib.open_study(recipe, folder).get_trials()}
    assert all(after[n] == before[n] for n in (0, 1))
    retry = next(r for r in results["trials"] if r["retry_of"] == 2)
    assert retry["state"] == "complete" and retry["settings"] == calls[0]
    assert sum(r["state"] == "complete" for r in results["trials"]) == 4
    # a third call has nothing left to do
    calls.clear()
    lib.search(recipe, runs_dir=tmp_path, finalize=False)
    assert calls == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() outside optimize: fine here
def test_a_trial_of_a_killed_process_is_requeued(tmp_path):
    from optuna.trial import TrialState

    from compress.pipeline.study import open_study, resume_study

    # setup: a RUNNING trial whose process is gone (kill -9)
    recipe = parse_recipe(tiny())
    study = open_study(recipe, tmp_path)
    trial = study.ask()
    trial.suggest_categorical("prune.sparsity", [0.25, 0.5, 0.9])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("pid", int(dead.stdout))
    trial.set_user_attr("host", __import__("socket").gethostname())
    # execute
    again = resume_study(study)
    # assert
    assert again == [trial.number]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.get_trials()[1].system_attrs["fixed_params"] == trial.params  # run first, same settings
    assert resume_study(study) == []  # not queued twice


def test_best_always_meets_the_budget_and_the_test_split_is_read_only_after_the_choice(tmp_path, monkeypatch,
                                                                                      one_thread):
    import compress.data.examples
    from compress.pipeline import search as lib
    from compress.report.search import write as write_report

    # setup: every data read is recorded with the phase it happened in
    recipe = parse_recipe(tiny(trials=4, fidelity={"validation_limit": 32, "slack": 1.0}, objective="latency"))
    real_load, reads, phase = compress.data.examples.load_examples, [], {"now": "selection"}

    def spy(spec, *args, **kwargs):
        reads.append((phase["now"], getattr(spec, "split", kwargs.get("split"))))
        return real_load(spec, *args, **kwargs)

    monkeypatch.setattr(compress.data.examples, "load_examples", spy)
    folder = lib.search_dir(recipe, tmp_path)
    seen = []

    def on_event(kind, **info):
        if kind == "phase" and info["name"] == "test":
            phase["now"] = "test"
        if kind == "trial":
            seen.append(info["row"])
            if any(r["feasible"] for r in seen):
                _check_best(folder, seen)  # after every trial, not only at the end
    # execute
    results = lib.search(recipe, runs_dir=tmp_path, on_event=on_event)
    # assert: honest selection
    assert ("selection", "test") not in reads
    assert ("selection", "validation") in reads
    # the test split: read once, after the choice (the final run's preflight may re-read train/validation)
    assert [r for r in reads if r[1] == "test"] == [("test", "test")]
    assert results["test"]["split"]["split"] == "test"
    # assert: the choice meets the budget on validation; best/ holds it
    chosen = results["chosen"]
    assert chosen["feasible"] and chosen["full"]["violation"] <= 0
    best = lib.read_best(folder)
    assert best["final"] and best["trial"] == chosen["number"] and best["figures"]["violation"] <= 0
    assert all(r["low"] is not None for r in results["trials"])  # cheap fidelity first
    assert results["bench"]["results"] and {r["model"] for r in results["bench"]["results"]} >= {"teacher", "base-onnx"}
    # the report renders every trial and the Pareto plot
    out = write_report(results, tmp_path / "report")
    text = (out / "report.md").read_text()
    assert text.count("| complete |") + text.count("| pruned |") == len(results["trials"])
    assert "## Chosen model" in text and "base-onnx" in text and (out / "pareto.png").exists()
    assert json.loads((out / "search.json").read_text())["chosen"]["number"] == chosen["number"]
    # a re-run of the finished search (to rebuild the report) reports the kept test figures, not a second read
    before = len(reads)
    again = lib.search(recipe, runs_dir=tmp_path)
    assert ("test", "test") not in reads[before:] and again["test"] == results["test"]
    assert again["cost"]["final_seconds"] == results["cost"]["final_seconds"]  # the cost of the run that measured


def test_changed_space_refuses_the_old_study(tmp_path):
    from compress.pipeline import search as lib

    lib.open_study(parse_recipe(tiny()), tmp_path)
    lib.open_study(parse_recipe(tiny(trials=9)), tmp_path)  # a bigger budget continues the same study
    with pytest.raises(CompressError, match="another version"):
        lib.open_study(parse_recipe(tiny(space={"prune.sparsity": [0.5]})), tmp_path)


def test_pareto_front():
    from compress.report.search import pareto

    points = [(1.0, 80.0), (2.0, 85.0), (2.5, 84.0), (0.5, 70.0), (3.0, 85.0)]
    assert pareto(points) == [0, 1, 3]


# --- fair timings: each bench worker sets its own wait policy ------------------------------------------------


def test_worker_env_per_backend_and_policy(tmp_path):
    from compress.evaluation.latency.environment import policy_record
    from compress.evaluation.latency.workers import backend_of, worker_env

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(b"")
    assert backend_of(str(tmp_path / "m")) == "onnxruntime" and backend_of("x/model.onnx") == "onnxruntime"
    assert backend_of("tiny:bert") == "pytorch"
    assert worker_env("pytorch", "native") == {"OMP_WAIT_POLICY": None}  # unset: as PyTorch users run it
    assert worker_env("onnxruntime", "native") == {"OMP_WAIT_POLICY": None}
    assert worker_env("pytorch", "passive") == {"OMP_WAIT_POLICY": "PASSIVE"}
    record = policy_record({"backend": "onnxruntime", "omp_wait_policy": None, "isolated": True}, "native")
    assert record == "native: OMP_WAIT_POLICY=unset, ORT intra-op spinning default (on)"


def test_isolated_worker_does_not_inherit_the_parents_policy(tiny_cnn, tmp_path, monkeypatch):
    from compress.evaluation.latency.bench import BenchSpec, bench

    # setup: training runs with PASSIVE (compress run's default); the bench must not pass it on
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    tiny_cnn.save(tmp_path / "cnn")
    spec = BenchSpec(batch_sizes=[1], seq_lens=[1], iters=2, rounds=1, warmup=1, threads=1)
    # execute
    row = bench([str(tmp_path / "cnn")], spec)["results"][0]
    # assert
    assert row["wait_policy"] == "native: OMP_WAIT_POLICY=unset"
    assert row["idle_cpu_ms"] == 0.0  # no other worker
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_idle_workers_are_waited_for_until_they_sleep(monkeypatch):
    from compress.evaluation.latency import workers as latency

    # setup: an idle worker whose threads spin for three more polls, then sleep
    class Spinning:
        def __init__(self):
            self.cpu, self.polls = 0.0, 0

        def cpu_times(self):
            self.polls += 1
            if self.polls <= 3:
                self.cpu += latency.QUIET_WINDOW_S  # a whole core
            return type("T", (), {"user": self.cpu, "system": 0.0})()

    worker = Spinning()
    # execute
    latency._wait_quiet([worker])
    # assert: it waited until the spinning stopped (and not past QUIET_MAX_WAIT_S)
    assert worker.polls >= 4


def test_a_trial_waits_while_another_terminal_holds_the_run_folder(monkeypatch):
    from compress.pipeline import runner as pipeline
    from compress.pipeline import trial as trials

    calls = []

    def busy_once(recipe, **kwargs):
        calls.append(recipe.name)
        if len(calls) == 1:
            raise CompressError("run folder 'runs/x' is in use by another compress run (pid 1)", "wait")
        return {"ok": True}

    monkeypatch.setattr(pipeline, "run", busy_once)
    monkeypatch.setattr(trials, "LOCK_RETRY_S", 0.0)
    assert trials.run_pipeline(parse_recipe(tiny()), None, False) == {"ok": True} and len(calls) == 2


def test_cli_search_writes_the_report_and_resumes(cli, tmp_path, one_thread):
    # setup
    path = write(tmp_path, tiny(trials=2, space={"prune.sparsity": [0.25, 0.5]}, sampler="grid"))
    args = ["search", path, "--runs", tmp_path / "runs", "-o", tmp_path / "reports"]
    # execute
    first = cli(args)
    again = cli(args)
    # assert
    assert first.exit_code == 0, first.output
    assert "trial 0: complete" in first.output and "scoring the test split once" in first.output
    folder = tmp_path / "reports" / "tiny-search"  # a name ending in -search gets no second suffix
    assert {"report.md", "report.html", "search.json"} <= {p.name for p in folder.iterdir()}
    assert again.exit_code == 0 and "trials: 2/2 finished" in again.output and "trial 0" not in again.output
    assert (tmp_path / "runs" / "tiny-search" / "search" / "best" / "best.json").exists()


def test_candidate_cannot_be_the_teacher():
    data = tiny()
    data["stages"].insert(0, {"name": "teacher", "from": "model", "pass": {"type": "prune_magnitude", "sparsity": 0.1}})
    data["search"]["candidate"] = "teacher"
    assert "search.candidate: 'teacher' is the teacher" in error_of(data)


def test_causal_search_needs_a_perplexity_budget(shared_data):
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "tiny-llama.yaml").read_text())
    data["search"] = {"space": {"int4.block_size": [16, 32]}, "candidate": "int4", "max_accuracy_drop": 0.01}
    assert "a causal LM has no accuracy; use max_perplexity_increase" in error_of(data)


@pytest.mark.slow
def test_causal_search_with_a_perplexity_budget(shared_data, tmp_path, one_thread):
    from pathlib import Path

    from compress.pipeline import search as lib
    from compress.report.search import write as write_report

    # setup: the tiny Llama recipe (ONNX with the KV cache, int4) with a perplexity budget
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "tiny-llama.yaml").read_text())
    data["data"]["source"] = str(shared_data / "rte")
    data["search"] = {"space": {"int4.block_size": [32]}, "candidate": "int4", "objective": "size",
                      "max_perplexity_increase": 0.5, "trials": 1, "sampler": "grid"}
    # execute
    results = lib.search(parse_recipe(data), runs_dir=tmp_path)
    # assert
    chosen = results["chosen"]["full"]
    assert results["budget_metric"] == "perplexity" and chosen["loss"] <= 0.5
    assert chosen["loss"] == pytest.approx(chosen["perplexity"] / chosen["teacher_perplexity"] - 1)
    assert results["test"]["stages"]["chosen"]["perplexity"] > 0
    assert "ppl" in (write_report(results, tmp_path / "report") / "report.md").read_text()


def test_trial_table_marks_repeated_settings():
    # setup: TPE may propose a finished setting again; the report says it was served from the cache
    from compress.report.search import trial_table

    row = {"state": "complete", "fidelity": "full", "low": None, "stopped": None, "error": None, "retry_of": None,
           "seconds": 1.0, "feasible": True,
           "full": {"accuracy": 0.9, "loss": 0.001, "p50_ms": 2.0, "size_mb": 10.0}}
    results = {"budget_metric": "accuracy", "trials": [{**row, "number": 0, "settings": {"a": 1, "b": 2}},
                                                       {**row, "number": 1, "settings": {"b": 2, "a": 1}},
                                                       {**row, "number": 2, "settings": {"a": 2, "b": 2}}]}
    # execute
    _, rows = trial_table(results)
    # assert
    notes = [r[-1] for r in rows]
    assert "same settings" not in notes[0] and "same settings as #0" in notes[1] and "same settings" not in notes[2]


# --- distributed search: workers sharing one study ------------------------------------------------------------

# A worker process: the real CLI, with each publish of best/ logged, and its first trial held until the other worker
# has started one too (so that both run trials of the study, however fast the first one starts).
WORKER = """
import json, os, sys, time
from pathlib import Path
from compress.pipeline import search as lib
from compress.pipeline import trial as trials

log, ready = Path(sys.argv[1]), Path(sys.argv[2])
real_publish, real_score = lib.publish_best, trials.score

def publish(folder, row, info, trial):
    with open(log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "trial": info["trial"], "final": info["final"]}) + "\\n")
    return real_publish(folder, row, info, trial)

def score(ctx, settings, fidelity):
    if not (ready / str(os.getpid())).exists():
        (ready / str(os.getpid())).touch()
        deadline = time.time() + 120
        while len(list(ready.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
    return real_score(ctx, settings, fidelity)

lib.publish_best, trials.score = publish, score
from compress.cli import app
app(sys.argv[3:])
"""


def test_two_workers_share_one_study_and_write_best_once(tmp_path):
    from _reliability import ENV

    from compress.pipeline.study import open_study

    # setup: two workers, one SQLite storage, one runs folder (a shared file system); four trials in all
    data = tiny(trials=4, space={"prune.sparsity": [0.25, 0.5]})
    path, db = write(tmp_path, data), tmp_path / "shared" / "study.db"
    db.parent.mkdir()
    ready, log = tmp_path / "ready", tmp_path / "publish.jsonl"
    ready.mkdir()
    url = f"sqlite:///{db}"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(log), str(ready), "search", str(path),
                                 "--runs", str(tmp_path / "runs"), "-o", str(tmp_path / f"reports-{i}"),
                                 "--storage", url, "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
               for i in range(2)]
    # execute
    outputs = [w.communicate(timeout=300) for w in workers]
    # assert: both finished, each ran trials of the one study, no trial number twice
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out + err
        assert "best model:" in out
    study = open_study(parse_recipe(data), tmp_path / "unused", storage=url)
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))
    assert 4 <= len(done) <= 5  # a worker may start one more while the other's last trial ends
    assert {t.user_attrs["pid"] for t in done} == {w.pid for w in workers}
    assert not (tmp_path / "unused").exists()  # --storage: no study file in the runs folder
    # assert: the final best/ was written once (the second worker reused the first one's finalization), and every
    # best trial of the trials phase once
    publishes = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(p["final"] for p in publishes) == 1
    during = [p["trial"] for p in publishes if not p["final"]]
    assert len(during) == len(set(during))
    best = json.loads((tmp_path / "runs" / "tiny-search" / "search" / "best" / "best.json").read_text())
    chosen = [json.loads((tmp_path / f"reports-{i}" / "tiny-search" / "search.json").read_text())["chosen"]["number"]
              for i in range(2)]
    assert best["final"] and chosen == [best["trial"]] * 2


# --- bad storage, Ctrl-C, no feasible trial: one line, the right exit code, inputs unchanged ----------------------


def _study_db(tmp_path, data: dict):
    """A real study database with one finished trial, and its checksum."""
    from _reliability import checksum

    from compress.pipeline.study import open_study

    db = tmp_path / "study.db"
    study = open_study(parse_recipe(data), tmp_path, storage=f"sqlite:///{db}")
    study.optimize(lambda trial: trial.suggest_categorical("prune.sparsity", [0.25, 0.5, 0.9]) and 1.0, n_trials=1)
    return db, checksum(db)


def test_corrupt_study_database_is_one_line_and_left_unchanged(cli, tmp_path):
    from _reliability import assert_one_line_error, checksum

    # setup: the default study file, and one given with --storage, both random bytes
    path = write(tmp_path, tiny(trials=1, space={"prune.sparsity": [0.5]}))
    default = tmp_path / "runs" / "tiny-search" / "search" / "study.db"
    default.parent.mkdir(parents=True)
    default.write_bytes(os.urandom(4096))
    other = tmp_path / "other.db"
    other.write_bytes(os.urandom(4096))
    before = checksum(default), checksum(other)
    # execute
    first = cli(["search", path, "--runs", tmp_path / "runs"])
    second = cli(["search", path, "--runs", tmp_path / "runs2", "--storage", f"sqlite:///{other}"])
    # assert
    assert_one_line_error(first, "is not an SQLite database", "--fresh")
    assert_one_line_error(second, "is not an SQLite database", "another --storage")
    assert (checksum(default), checksum(other)) == before
    assert not (tmp_path / "runs2" / "tiny-search" / "search" / "best").exists()
    # the fix the first one names works: --fresh starts a new study in place of the default file
    fresh = cli(["search", path, "--runs", tmp_path / "runs", "--fresh", "--trials-only", "--no-progress"])
    assert fresh.exit_code == 0, fresh.output


def test_read_only_study_database_is_one_line_and_left_unchanged(cli, tmp_path):
    from _reliability import assert_one_line_error, checksum

    # setup: SQLite opened read-only (works as root too, unlike chmod)
    data = tiny()
    db, before = _study_db(tmp_path, data)
    # execute
    result = cli(["search", write(tmp_path, data), "--runs", tmp_path / "runs",
                  "--storage", f"sqlite:///file:{db}?mode=ro&uri=true"])
    # assert
    assert_one_line_error(result, "read-only")
    assert checksum(db) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
@pytest.mark.parametrize("what", ["file", "folder"])
def test_chmod_read_only_study_is_one_line_and_left_unchanged(cli, tmp_path, what):
    from _reliability import assert_one_line_error, checksum

    data = tiny()
    db, before = _study_db(tmp_path / "s", data)
    locked = db if what == "file" else db.parent
    locked.chmod(0o444 if what == "file" else 0o555)
    try:
        result = cli(["search", write(tmp_path, data), "--runs", tmp_path / "runs", "--storage", f"sqlite:///{db}"])
    finally:
        locked.chmod(0o644 if what == "file" else 0o755)
    assert_one_line_error(result, "read-only", "writable")
    assert checksum(db) == before


@pytest.mark.parametrize("url, expected", [
    ("not a url", "is not a database URL"),
    ("nosuchdb://host/db", "is not a database URL"),
    ("sqlite:////nonexistent-folder/x/study.db", "does not exist"),
    ("postgresql://me:s3cret@127.0.0.1:1/db", "storage postgresql://me:***@127.0.0.1:1/db"),  # no driver, or refused
])
def test_unusable_storage_url_is_one_line(cli, tmp_path, url, expected):
    from _reliability import assert_one_line_error

    result = cli(["search", write(tmp_path, tiny()), "--runs", tmp_path / "runs", "--storage", url])
    line = assert_one_line_error(result, expected)
    assert "s3cret" not in line
    assert not (tmp_path / "runs" / "tiny-search" / "search" / "study.db").exists()


def test_ctrl_c_exits_130_with_one_line_and_the_search_resumes(cli, tmp_path, monkeypatch, one_thread):
    from compress.pipeline import trial as trials

    # setup: Ctrl-C in the second trial
    path = write(tmp_path, tiny(trials=2, space={"prune.sparsity": [0.25, 0.5]}))
    args = ["search", path, "--runs", tmp_path / "runs", "-o", tmp_path / "reports", "--trials-only", "--no-progress"]
    real, calls = trials.score, []

    def interrupted(ctx, settings, fidelity):
        calls.append(settings)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ctx, settings, fidelity)

    monkeypatch.setattr(trials, "score", interrupted)
    # execute
    first = cli(args)
    again = cli(args)
    # assert: one line, exit 130; the re-run runs the interrupted trial first and finishes
    assert first.exit_code == 130, first.output
    assert first.output.strip().splitlines()[-1] == "interrupted after 1 trial; re-run the same command to resume"
    assert "Traceback" not in first.output
    assert again.exit_code == 0, again.output
    assert "trials: 1/2 finished, re-running interrupted trial(s) [1]" in again.output
    assert calls[2] == calls[1]  # the same settings again
    study = json.loads((tmp_path / "runs" / "tiny-search" / "search" / "best" / "best.json").read_text())
    assert study["figures"]["violation"] <= 0


def test_real_sigint_exits_130_and_resumes(tmp_path):
    import re
    import signal
    import time

    from _reliability import compress, popen

    from compress.pipeline.study import finished, open_study, search_dir

    # setup: the real CLI as a process, interrupted once its first trial is done
    path = write(tmp_path, tiny(trials=3, space={"prune.sparsity": [0.25, 0.5]}))
    args = ["search", path, "--runs", tmp_path / "runs", "--trials-only", "--no-progress"]
    proc = popen(*args)
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith("trial 0:") or time.time() > deadline:
            break
    # execute
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    again = compress(*args)
    # assert
    assert proc.returncode == 130, out + err
    assert err.strip().splitlines()[-1].startswith("interrupted after ") and "Traceback" not in err
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"^trial \d+: complete", again.stdout, re.M)  # it went on where it stopped
    assert "best so far:" in again.stdout
    recipe = parse_recipe(tiny(trials=3, space={"prune.sparsity": [0.25, 0.5]}))
    assert finished(open_study(recipe, search_dir(recipe, tmp_path / "runs"))) == 3


def test_no_feasible_trial_exits_2_and_points_at_no_best(cli, tmp_path, one_thread):
    from compress.pipeline import search as lib

    # setup: sparsity 0.9 costs about 6 pt; the budget is 0.1 pt
    data = tiny(trials=1, space={"prune.sparsity": [0.9]}, max_accuracy_drop=0.001)
    # execute
    result = cli(["search", write(tmp_path, data), "--runs", tmp_path / "runs", "-o", tmp_path / "reports",
                  "--no-progress"])
    # assert
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: no trial met the budget (max_accuracy_drop 0.001") and "widen" in last
    assert "Traceback" not in result.output and "best" not in result.output.replace(last, "")
    folder = lib.search_dir(parse_recipe(data), tmp_path / "runs")
    assert not (folder / "best").exists()
    assert (tmp_path / "reports" / "tiny-search" / "report.md").exists()  # the report shows the trials
