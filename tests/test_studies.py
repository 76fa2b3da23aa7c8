"""Case studies: the per-prompt maths on tiny random models, the checks on a planted-circuit model whose answer is
known, the positional verdict logic, and the IOI study end to end on the organism (in-process and in two worker
processes, byte-identical reports)."""

from __future__ import annotations

import random

import pytest
import torch

from circuits.attribution import Contrast, attribute
from circuits.interventions import Ablation, run_edited
from circuits.pruning import total_effects
from circuits.replacement import ReplacementModel
from circuits.studies.analysis import component_rollup, integrated_gradients
from circuits.studies.base import Study, StudyPrompt, group_means, prepare
from circuits.studies.checks import AblateRoleFeatures, PatchRoleFeatures
from circuits.studies.ioi import IOIStudy, PositionalCheck
from tests.conftest import build_tiny, random_dictionaries


@pytest.fixture(scope="module")
def ioi_tiny(rm64):
    prepared = prepare(rm64, IOIStudy("train"), IOIStudy("train").prompts(rm64.model, 4, 0))
    return rm64, prepared


def test_total_effects_equal_gradient_times_activation(ioi_tiny):
    """Signed path sums over the graph = gradient × value in the frozen replacement model (features live, errors
    held): for every feature and error node."""
    rm, prepared = ioi_tiny
    pp = prepared[0]
    cache = rm.run(pp.tokens)
    graph = attribute(rm, pp.tokens, Contrast(pp.answer, pp.wrong), cache=cache)
    effects = total_effects(graph)
    store: dict = {}
    with torch.enable_grad():
        logits = run_edited(rm, cache, frozen=True, grad_codes=store)[0]
        names = list(store)
        grads = torch.autograd.grad(pp.metric(logits), [t for n in names for t in store[n]])
    by_name = {d.cfg.name: d for d in rm.dictionaries}
    checked = 0
    for j, name in enumerate(names):
        d = by_name[name]
        kind = "attn" if d.cfg.kind != "transcoder" else "mlp"
        g_code, g_err = grads[2 * j], grads[2 * j + 1]
        for row, node in enumerate(graph.nodes):
            if node.layer != d.cfg.layer:
                continue
            if node.kind == f"{kind}_feature":
                expect = g_code[node.pos, node.index] * cache.codes[name][node.pos, node.index]
            elif node.kind == f"{kind}_error":
                expect = (g_err[node.pos] * cache.errors[name][node.pos]).sum()
            else:
                continue
            assert abs(float(effects[row]) - float(expect)) <= 1e-9 * (1 + abs(float(expect)))
            checked += 1
    assert checked > 50


def test_component_rollup_splits_feature_effects_exactly(ioi_tiny):
    """Head shares of each attention layer's features (and the MLP layers') sum to the graph's total effects."""
    rm, prepared = ioi_tiny
    pp = prepared[1]
    cache = rm.run(pp.tokens)
    graph = attribute(rm, pp.tokens, Contrast(pp.answer, pp.wrong), cache=cache)
    effects = total_effects(graph)
    roll = component_rollup(rm, cache, pp)
    for layer in range(rm.n_layers):
        for site, kind in (("attn", "attn_feature"), ("mlp", "mlp_feature")):
            from_graph = sum(float(effects[i]) for i, n in enumerate(graph.nodes) if n.kind == kind and n.layer == layer)
            from_roll = sum(v[0] for k, v in roll.items() if k[0] == site and k[1] == layer)
            assert from_roll == pytest.approx(from_graph, rel=1e-9, abs=1e-9)
    heads = {k[2] for k in roll if k[0] == "attn"}
    assert heads == set(range(rm.cfg.n_heads))


def test_gates_interpolate_between_ablated_and_live(ioi_tiny):
    rm, prepared = ioi_tiny
    pp = prepared[0]
    cache = rm.run(pp.tokens)
    abl = group_means(rm, prepared)[pp.group]
    active = {n: cache.codes[n] != 0 for n in cache.codes}

    def gates(value: float):
        return {n: (torch.where(a, torch.full(a.shape, value), torch.ones(a.shape)), torch.full((cache.n_pos,), value))
                for n, a in active.items()}

    live = run_edited(rm, cache, gates=gates(1.0), ablation=abl)[0]
    torch.testing.assert_close(live, cache.logits, rtol=0, atol=1e-10)
    none = ({k: ~v for k, v in active.items()}, {k: torch.zeros(cache.n_pos, dtype=torch.bool) for k in active})
    # (inactive features live in both runs here: gates of 1 on them, and kept live by the masks)
    torch.testing.assert_close(run_edited(rm, cache, gates=gates(0.0), ablation=abl)[0],
                               run_edited(rm, cache, keep=none, ablation=abl)[0], rtol=0, atol=1e-10)


def test_integrated_gradients_are_complete(tiny64):
    """Σ IG scores → m(model) − m(every node ablated) as the number of steps grows (midpoint rule), for continuous
    activations (ReLU dictionaries; TopK's selection jumps are discontinuities IG cannot see, which the study report
    quantifies as its "IG check")."""
    model, _ = tiny64
    rm = ReplacementModel(model, random_dictionaries(model, activation="relu", seed=3))
    prepared = prepare(rm, IOIStudy("train"), IOIStudy("train").prompts(model, 3, 0))
    pp = prepared[2]
    cache = rm.run(pp.tokens)
    abl = Ablation("zero")
    gap = float(pp.metric(cache.logits))
    errs = []
    for steps in (2, 32):
        scores, empty = integrated_gradients(rm, cache, pp, abl, steps)
        errs.append(abs(sum(scores.values()) - (gap - empty)))
    assert errs[1] < 0.05 * abs(gap - empty) + 1e-6
    assert errs[1] < errs[0]


# -- a planted circuit --------------------------------------------------------------------------------------------

ON, ANSWER, WRONG = "apple", "ball", "book"


class PlantedStudy(Study):
    """Random five-word prompts ending on ON; the corrupted prompt ends on another word."""

    name = "planted"
    title = "planted"
    roles = ("BOS", "END")

    def prompts(self, model, n, seed):
        from circuits.organism.corpus import induction_word_pool

        pool = sorted(w for w in induction_word_pool() if w not in (ON, ANSWER, WRONG))
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            words = rng.sample(pool, 5)
            out.append(StudyPrompt(" ".join(words[:4] + [ON]), " ".join(words), ANSWER, WRONG, "all"))
        return out

    def assign_roles(self, model, prompt, tokens):
        return self.bos_end_roles(len(tokens))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A float64 2-layer model where residual dimension 0 is written only by MLP neuron 0 of layer 1 (which fires on
    the token ON) and read only by the contrast ANSWER − WRONG; transcoder L1 feature 0 *is* that neuron, so its
    error on dimension 0 is exactly zero. The answer is known: the metric is carried by that one feature at END."""
    from circuits.studies.base import single_token_id

    model = build_tiny(tmp_path_factory.mktemp("planted"), dtype=torch.float64, act_fn="relu")
    dicts = random_dictionaries(model, activation="relu", seed=1)
    on, a, b = (single_token_id(model, w) for w in (ON, ANSWER, WRONG))
    with torch.no_grad():
        model.W_E[:, 0] = 0
        model.W_pos[:, 0] = 0
        for blk in model.blocks:
            blk.attn.W_O[..., 0] = 0
            blk.attn.b_O[0] = 0
            blk.mlp.W_out[:, 0] = 0
            blk.mlp.b_out[0] = 0
        mlp = model.blocks[1].mlp
        # neuron 0 reads the direction that separates END = ON from other END words in its own input (a probe)
        study = PlantedStudy()
        prompts = study.prompts(model, 8, 0)
        hook = "blocks.1.ln2.hook_normalized"
        on_x = torch.stack([model.run_with_cache(p.clean, names_filter=hook)[1][hook][0, -1] for p in prompts])
        off_x = torch.stack([model.run_with_cache(p.corrupt, names_filter=hook)[1][hook][0, -1] for p in prompts])
        direction = on_x.mean(0) - off_x.mean(0)
        direction = direction / direction.norm()
        lo, hi = float((off_x @ direction).max()), float((on_x @ direction).min())
        assert hi > lo, "the probe must separate ON from the other words"
        ln2 = model.blocks[1].ln2  # the MLP reads hook_normalized · w + b
        mlp.W_in[:, 0] = 20 * direction / (hi - lo) / ln2.w
        mlp.b_in[0] = -20 * (lo + hi) / 2 / (hi - lo) - ln2.b @ mlp.W_in[:, 0]  # pre ≥ +10 on ON, ≤ −10 elsewhere
        mlp.W_out[0] = 0
        mlp.W_out[0, 0] = 8.0
        model.W_U[:, b] = model.W_U[:, a]
        model.W_U[0, a], model.W_U[0, b] = 1.0, 0.0
        tc = next(d for d in dicts if d.cfg.kind == "transcoder" and d.cfg.layer == 1)
        tc.b_in_param.zero_()
        tc.W_enc[:, 0] = ln2.w * mlp.W_in[:, 0]  # the transcoder reads hook_normalized itself
        tc.b_enc[0] = mlp.b_in[0] + ln2.b @ mlp.W_in[:, 0]
        tc.W_dec[:, 0] = 0
        tc.b_dec[0] = 0
        tc.W_dec[0] = mlp.W_out[0]
    rm = ReplacementModel(model, dicts, name="planted")
    prepared = prepare(rm, study, prompts)
    # put the decision threshold between ON and not-ON prompts
    with torch.no_grad():
        on_m = [float(pp.metric(model(pp.tokens[None])[0])) for pp in prepared]
        off_m = [float(pp.metric(model(pp.corrupt_tokens[None])[0])) for pp in prepared]
        assert min(on_m) > max(off_m) + 1.0, "the planted neuron must separate ON from other words"
        model.b_U[b] += (min(on_m) + max(off_m)) / 2  # metric' = metric − threshold
    key = ("mlp_feature", 1, "END", 0)
    return rm, study, prepared, key


def test_ablating_the_planted_feature_flips_the_answer(planted):
    rm, study, prepared, key = planted
    check = AblateRoleFeatures("END", k=1)
    context = {"ranking": [(key, 1.0)]}
    rows = []
    for pp in prepared:
        cache = rm.run(pp.tokens)
        rows.append(check.run(rm, cache, pp, Ablation("zero"), context))
    assert all(r["before"] > 0 and r["after"] < 0 for r in rows)  # the feature alone carries the answer
    summary = check.summarize(rows)
    assert summary["verdict"].startswith("confirmed: the metric falls") and summary["fraction_lowered"] == 1.0
    assert summary["drop"] > 2 * max(summary["drop_random"], 0.0)


def test_patching_the_planted_feature_from_the_corrupted_prompt(planted):
    """Patching feature 0 at END from the corrupted prompt gives exactly the corrupted metric when the rest of
    END's computation feeds nothing else into dimension 0."""
    rm, study, prepared, key = planted
    check = PatchRoleFeatures("END", "mlp_feature", k=1)
    context = {"ranking": [(key, 1.0)]}
    rows = [check.run(rm, rm.run(pp.tokens), pp, None, context) for pp in prepared]
    for r in rows:
        assert r["source"] < 0 < r["before"]
        assert r["after_top"] < 0  # the answer flips with one feature patched
    summary = check.summarize(rows)
    assert summary["flipped_top"] == 1.0
    assert summary["verdict"].startswith("confirmed")


def test_positional_verdict_logic():
    """Rows where the order is written at S2 on clean and filler prompts but not without 'and' → relative."""
    rows = []
    for i in range(16):
        order = "ABBA" if i % 2 == 0 else "BABA"
        sig = {0: 1.0} if order == "ABBA" else {1: 1.0}
        row = {"order": order, "index": i}
        for v, s2 in (("clean", sig), ("filler", sig), ("no_and", {2: 1.0})):
            row[v] = {"metric": 1.0, "S2": s2, "END": sig}
        rows.append(row)
    res = PositionalCheck().summarize(rows)
    assert res["probe_S2_clean"] == 1.0 and res["probe_S2_filler"] == 1.0 and res["probe_S2_no_and"] == 0.5
    assert res["verdict"].startswith("relative")


# -- end to end on the organism -------------------------------------------------------------------------------------


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "timings.json"}


def test_ioi_study_end_to_end_reproducible_and_parallel(tmp_path):
    """A small IOI study runs end to end; the report is byte-identical between an in-process run and a run split
    over two worker processes (same seed), apart from timings."""
    from circuits.studies import StudySpec, run_study, write_report
    from circuits.studies.report import FILES

    spec = StudySpec("ioi", n=12, seed=0, ig_steps=2)  # held-out templates: 6 groups of 2
    one = run_study(spec, workers=1, top=20, progress=False)
    write_report(one, tmp_path / "report")
    a = _files(tmp_path / "report")
    two = run_study(spec, workers=2, top=20, progress=False)
    write_report(two, tmp_path / "report")  # the same folder: the report names its own path
    b = _files(tmp_path / "report")
    assert set(FILES) <= set(a)
    assert a == b
    d = one.data
    assert d["n_prompts"] == 12 and d["circuit"]["n_features"] == 20
    assert set(d["checks"]) == {"ablate_S2_features", "ablate_END_features", "patch_END_attn_from_swapped",
                                "positional"}
    # the curve's end points are what they claim: nothing kept = 0, every node kept = the model
    assert d["curve"]["points"]["empty"]["score"] == pytest.approx(0.0, abs=1e-12)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Faithfulness of the 20-feature circuit" in report and "circuits study ioi --n 12" in report
    from circuits.export import read_json

    g = read_json(tmp_path / "report" / "circuit.json")
    assert g.metadata["aggregated"] and g.metadata["token_strings"][0] == "BOS"
    assert sum(n.kind.endswith("_feature") for n in g.nodes) <= 20


def test_study_cli_lists_and_rejects_bad_input(capsys):
    from circuits.cli import main

    assert main(["study", "list"]) == 0
    out = capsys.readouterr().out
    assert "ioi" in out and "induction" in out and "two_hop" in out
    assert main(["study", "nosuch"]) == 2
    assert "unknown study 'nosuch'" in capsys.readouterr().err
    assert main(["study", "ioi", "--n", "2"]) == 2
    assert "--n must be at least 4" in capsys.readouterr().err
    assert main(["study", "induction", "--templates", "train"]) == 2
    assert "--templates applies to the ioi study only" in capsys.readouterr().err


def test_study_on_gpt2_offline_fails_fast_and_clearly(capsys, no_network):
    import time

    from circuits.cli import main

    t0 = time.perf_counter()
    assert main(["study", "ioi", "--model", "gpt2", "--dicts", "gpt2-transcoders", "--n", "8", "--workers", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "organism" in err
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("name", ["induction", "two_hop"])
def test_other_studies_prepare_on_the_organism(name):
    """The induction and two-hop datasets tokenize on the organism, line up with their corrupted prompts, and
    assign every role."""
    from circuits import load_dictionaries, load_model
    from circuits.studies import get_study

    model, _ = load_model("organism")
    rm = ReplacementModel(model, load_dictionaries("organism", model), name="organism")
    study = get_study(name)
    prepared = prepare(rm, study, study.prompts(model, 12, 0))
    for pp in prepared:
        assert set(study.roles) <= set(pp.roles)
        assert pp.answer != pp.wrong
    assert len({pp.group for pp in prepared}) == 1


def test_study_runs_with_transcoders_only(tiny64, tmp_path):
    """The GPT-2 configuration (transcoders, no attention SAEs: attention is a linear channel, autograd edges) runs
    end to end on a tiny model: no head traffic (it needs attention features), everything else present."""
    from circuits.studies import StudySpec, run_study, write_report

    model, dicts = tiny64
    rm = ReplacementModel(model, [d for d in dicts if d.cfg.kind == "transcoder"], name="tiny")
    spec = StudySpec("planted", model="tiny", dicts="tiny", n=8, seed=0, ig_steps=2)
    result = run_study(spec, rm=rm, study=PlantedStudy(), workers=1, top=5, progress=False)
    d = result.data
    assert d["traffic"] == [] and d["circuit"]["n_features"] == 5
    assert {c["site"] for c in d["components"]} == {"mlp"}
    assert d["curve"]["points"]["empty"]["score"] == pytest.approx(0.0, abs=1e-12)
    write_report(result, tmp_path / "r")
    assert (tmp_path / "r" / "report.md").exists()


# -- worker processes: unguarded scripts, failing workers (issue 16, item 11) ---------------------------------------

UNGUARDED_SCRIPT = """
from circuits.studies import StudySpec, run_study

result = run_study(StudySpec("ioi", n=4, ig_steps=2), workers=2, top=5, progress=False)
print("DONE", result.data["circuit"]["n_features"])
"""


def test_unguarded_script_runs_in_process_with_one_warning(tmp_path):
    """The README's study example saved as a script without `if __name__ == "__main__":` used to crash (each spawned
    worker re-ran the script; with n=200 after 11 minutes): now the work runs in the calling process, with one
    warning naming the guard, and finishes."""
    import subprocess
    import sys
    import time

    script = tmp_path / "study_script.py"
    script.write_text(UNGUARDED_SCRIPT)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE 5" in proc.stdout
    assert proc.stderr.count('`if __name__ == "__main__":` guard') == 1
    assert "BrokenProcessPool" not in proc.stderr and "bootstrapping" not in proc.stderr
    assert time.perf_counter() - t0 < 240


def test_main_guard_detection(tmp_path):
    """`main_module_guarded` is false for a call made by an unguarded top-level statement of the main script (also
    through a function), true under the guard (either operand order) and without a main script (`python -c`)."""
    import subprocess
    import sys

    probe = "from circuits.studies.batch import main_module_guarded as g\n"
    cases = {
        "print(g()[0])\n": "False",
        "def f():\n    return g()[0]\nprint(f())\n": "False",
        "def f():\n    return g()[0]\nif __name__ == '__main__':\n    print(f())\n": "True",
        "if '__main__' == __name__ and True:\n    print(g()[0])\n": "True",
    }
    for i, (body, want) in enumerate(cases.items()):
        script = tmp_path / f"s{i}.py"
        script.write_text(probe + body)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == want, (body, out.stderr[-2000:])
    out = subprocess.run([sys.executable, "-c", probe + "print(g()[0])"], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_worker_pool_fails_at_the_first_error():
    """A failing call ends the pool at once (the running and pending calls before it are not waited for) and its
    exception is raised in the caller; a worker that dies is one clear CircuitsError."""
    import time

    from circuits.errors import CircuitsError
    from circuits.studies.batch import run_pool

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="invalid literal"):
        run_pool(eval, [("__import__('time').sleep(120)",), ("int('x')",), ("__import__('time').sleep(120)",)], 2)
    assert time.perf_counter() - t0 < 60
    with pytest.raises(CircuitsError, match="worker process died"):
        run_pool(eval, [("__import__('os')._exit(3)",)], 1)
    assert time.perf_counter() - t0 < 90
    assert run_pool(eval, [("1 + 1",), ("2 * 3",)], 2) == [2, 6]
