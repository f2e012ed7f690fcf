"""Every selector in the registry, and the cost-aware choice against the paper's top-k rule."""

import itertools
import json

import pytest
import torch
from conftest import tiny_llama
from test_probe import make_batches

from aletheia.config import AdapterConfig, ProbeConfig
from aletheia.cost import CostModel, cost_cache_path
from aletheia.errors import AletheiaError
from aletheia.selection import SELECTORS, SelectionContext, select_layers, top_fraction
from aletheia.selectors import candidate_sets, choose_cost_aware, matrix_snr, spectrum_scores


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALETHEIA_CACHE", str(tmp_path / "cache"))


def select(name, model=None, seed=42, **probe):
    model = model or tiny_llama(num_layers=6)
    cfg = ProbeConfig(selector=name, batches=2, batch_size=2, calibration_rounds=1, **probe)
    return select_layers(SelectionContext(model, make_batches(n=2), cfg, seed=seed, progress=False,
                                          adapter=AdapterConfig(attention_rank=2, mlp_rank=4, standard_rank=2)))


@pytest.mark.parametrize("name", ["gradient-norm", "gradient-norm-per-param", "random", "last-n",
                                  "first-n", "spectrum", "cost-aware"])
def test_every_selector_returns_a_valid_layer_set(name):
    assert name in SELECTORS
    sel = select(name)
    assert sel.selector == name and sel.num_layers == 6
    assert len(sel.layers) == 3  # fraction 0.5 of 6
    assert sel.layers == sorted(set(sel.layers)) and all(0 <= i < 6 for i in sel.layers)
    d = sel.to_dict()
    assert d["selected_layers"] == sel.layers and 0 <= d["signal_kept"] <= 1 + 1e-9


def test_positional_selectors_take_the_ends():
    assert select("last-n").layers == [3, 4, 5]
    assert select("first-n").layers == [0, 1, 2]
    assert select("last-n", fraction=0.01).layers == [5]


def test_random_is_reproducible_from_the_seed():
    a, b, c = select("random", seed=1), select("random", seed=1), select("random", seed=2)
    assert a.layers == b.layers and a.scores == b.scores
    assert a.scores != c.scores


def test_per_param_normalisation_divides_by_the_root_of_the_block_size():
    model = tiny_llama(num_layers=4)
    plain, per_param = select("gradient-norm", model), select("gradient-norm-per-param", model)
    n = per_param.details["block_parameters"][0]
    assert per_param.scores[0] == pytest.approx(plain.scores[0] / n ** 0.5)
    assert per_param.layers == plain.layers  # identical blocks: same ranking


def test_spectrum_is_data_free_and_finds_the_structured_block():
    model = tiny_llama(num_layers=4, hidden_size=64, intermediate_size=128)
    with torch.no_grad():  # give block 2 strong low-rank structure on top of its random weights
        for p in model.model.layers[2].parameters():
            if p.dim() == 2:
                u, v = torch.randn(p.shape[0], 2), torch.randn(2, p.shape[1])
                p.add_(u @ v * 0.5)
    scores, per_matrix = spectrum_scores(model)
    assert max(range(4), key=scores.__getitem__) == 2
    assert set(per_matrix[0]) >= {"self_attn.q_proj.weight", "mlp.down_proj.weight"}
    # no data involved: the selection ignores the batches entirely
    cfg = ProbeConfig(selector="spectrum", fraction=0.25)
    sel = select_layers(SelectionContext(model, [], cfg, progress=False))
    assert sel.layers == [2] and sel.probe is None


def test_matrix_snr_separates_noise_from_signal():
    torch.manual_seed(0)
    noise = torch.randn(64, 256)
    assert matrix_snr(noise) < 0.05  # pure noise: (almost) nothing above the bulk edge
    spike = noise + 3.0 * torch.randn(64, 1) @ torch.randn(1, 256)
    assert matrix_snr(spike) > 10 * matrix_snr(noise)


# --- cost-aware ----------------------------------------------------------------------------------

def toy_cost(n=8, intercept=1.0, per_block=0.2, per_mparam=0.5, per_module=0.0):
    shapes = [{"q_proj": [100, 100], "up_proj": [100, 300]} for _ in range(n)]
    return CostModel(n, {"intercept": intercept, "per_block": per_block, "per_module": per_module,
                     "per_mparam": per_mparam}, 100,
                     shapes, ["q_proj"], ["up_proj"])


def test_candidate_sets_hold_the_best_set_for_every_lowest_layer_and_size():
    scores = [5.0, 1.0, 4.0, 3.0, 2.0]
    cands = candidate_sets(scores)
    assert len(cands) == 5 * 6 // 2
    assert [1, 2, 3] in cands and [1, 3] not in cands  # above layer 1, layer 2 beats layer 3
    assert top_fraction(scores, 0.6) in cands


@pytest.mark.parametrize("seed", range(20))
def test_cost_aware_is_never_predicted_slower_than_top_k(seed):
    g = torch.Generator().manual_seed(seed)
    n = 8
    scores = (torch.rand(n, generator=g) ** 3).tolist()
    cost = toy_cost(n, per_block=float(torch.rand(1, generator=g)))
    for fraction in (0.25, 0.5, 0.75):
        layers, info = choose_cost_aware(scores, cost.predict, cost.predict_standard(), fraction)
        topk = top_fraction(scores, fraction)
        assert len(layers) == len(topk)
        assert cost.predict(layers) <= cost.predict(topk) + 1e-12
        assert info["predicted_step_seconds"] == pytest.approx(cost.predict(layers))


def test_cost_aware_moves_up_when_a_low_layer_costs_more_than_it_brings():
    # layer 0 has a little more signal than layer 7, but keeping it means a backward through all blocks
    scores = [1.1, 0.1, 0.1, 0.1, 0.9, 1.0, 1.0, 1.0]
    cost = toy_cost(per_block=0.3)
    layers, info = choose_cost_aware(scores, cost.predict, cost.predict_standard(), 0.5)
    assert top_fraction(scores, 0.5) == [0, 5, 6, 7]
    assert layers == [4, 5, 6, 7]
    assert info["predicted_speedup"] > cost.predict_standard() / cost.predict([0, 5, 6, 7])


def test_time_budget_keeps_the_most_signal_that_fits():
    scores = [3.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 2.0]
    cost = toy_cost()
    std = cost.predict_standard()
    layers, info = choose_cost_aware(scores, cost.predict, std, time_budget=0.7)
    assert cost.predict(layers) <= 0.7 * std
    share = [s / sum(scores) for s in scores]
    best = max(sum(share[i] for i in c) for r in range(1, 9) for c in itertools.combinations(range(8), r)
               if cost.predict(list(c)) <= 0.7 * std)
    assert info["gradient_signal_kept"] == pytest.approx(best)  # exhaustive search agrees
    with pytest.raises(AletheiaError, match="time_budget"):
        choose_cost_aware(scores, cost.predict, std, time_budget=0.01)


def test_a_budget_below_the_fastest_step_takes_the_fastest_set_when_asked():
    scores = [3.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 2.0]
    cost = toy_cost()
    std = cost.predict_standard()
    layers, info = choose_cost_aware(scores, cost.predict, std, time_budget=0.01, fallback=True)
    fastest = min(cost.predict(list(c)) for r in range(1, 9) for c in itertools.combinations(range(8), r))
    assert cost.predict(layers) == pytest.approx(fastest)
    assert "below the fastest possible" in info["rule"]


def test_tradeoff_zero_keeps_everything_and_a_large_one_keeps_little():
    scores = [1.0] * 8
    cost = toy_cost()
    everything, _ = choose_cost_aware(scores, cost.predict, cost.predict_standard(), tradeoff=0.0)
    assert everything == list(range(8))
    little, _ = choose_cost_aware(scores, cost.predict, cost.predict_standard(), tradeoff=100.0)
    assert little == [7]


def test_cost_aware_records_its_prediction_in_probe_json_fields():
    sel = select("cost-aware")
    d = sel.to_dict()
    for key in ("predicted_step_seconds", "predicted_standard_step_seconds", "predicted_speedup",
                "gradient_signal_kept", "cost_model"):
        assert key in d
    assert d["gradient_signal_kept"] == pytest.approx(sel.signal_kept)
    assert d["predicted_step_seconds"] <= d["topk_predicted_step_seconds"] + 1e-12


def test_cost_options_are_validated():
    with pytest.raises(AletheiaError, match="time_budget"):
        ProbeConfig(time_budget=1.5).validate()
    with pytest.raises(AletheiaError, match="alternatives"):
        ProbeConfig(time_budget=0.5, tradeoff=1.0).validate()
    with pytest.raises(AletheiaError, match="tradeoff"):
        ProbeConfig(tradeoff=-1).validate()
    assert ProbeConfig.from_dict({"selector": "cost-aware", "time_budget": 0.6}).time_budget == 0.6


def test_cli_probe_with_the_cost_aware_selector_records_time_and_signal(tmp_path, tiny_model_dir, capsys,
                                                                         alpaca_file):
    from aletheia.cli import main

    out = tmp_path / "probe"
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "--model", str(tiny_model_dir), "--data", str(alpaca_file), "--selector", "cost-aware",
              "--time-budget", "1.0", "--batch-size", "2", "--batches", "2", "--max-length", "48",
              "--output", str(out), "--quiet"])
    assert (exit_info.value.code or 0) == 0
    probe = json.loads((out / "probe.json").read_text())
    # (a tiny model's steps are mostly fixed overhead, so only budget 1.0 is surely feasible here)
    assert probe["selector"] == "cost-aware" and probe["time_budget"] == 1.0
    assert probe["predicted_step_seconds"] <= probe["predicted_standard_step_seconds"] + 1e-12
    assert 0 < probe["gradient_signal_kept"] <= 1
    with pytest.raises(SystemExit) as exit_info:  # a bad value is one line, exit 2
        main(["probe", "--model", str(tiny_model_dir), "--selector", "cost-aware", "--time-budget", "2",
              "--output", str(out), "--quiet"])
    assert exit_info.value.code == 2 and "time_budget" in capsys.readouterr().err


def test_cost_aware_with_matched_parameters_times_each_set_at_the_ranks_it_will_train_with():
    model = tiny_llama(num_layers=6)
    plain = select("cost-aware", model=model, time_budget=1.0)
    adapter = AdapterConfig(attention_rank=2, mlp_rank=4, standard_rank=2, match_parameters=True)
    cfg = ProbeConfig(selector="cost-aware", batches=2, batch_size=2, calibration_rounds=1, time_budget=1.0)
    matched = select_layers(SelectionContext(model, make_batches(n=2), cfg, seed=42, progress=False, adapter=adapter))
    cost = CostModel.load(cost_cache_path(matched.details["cost_model_key"]))
    want = cost.matched(matched.layers, adapter)
    assert matched.details["mlp_rank"] == want.mlp_rank >= 4 and plain.details["mlp_rank"] == 4
    assert matched.details["predicted_step_seconds"] == pytest.approx(cost.predict(matched.layers, want))
