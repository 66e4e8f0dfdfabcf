"""Every sentence that states a finding follows the run: opposite numbers give opposite sentences."""
from cna_utils.publish import prose
from cna_utils.measure.stats import Measure


def test_accuracy_by_op_follows_the_numbers():
    worse = prose.accuracy_by_op({"+": (45, 50), "-": (20, 50)}, {"+": 88.9, "-": 82.0})
    better = prose.accuracy_by_op({"+": (20, 50), "-": (45, 50)})
    level = prose.accuracy_by_op({"+": (25, 50), "-": (24, 50)})
    assert "answers - worse than +" in worse and "Llama-7B on the same template: + 88.9%" in worse
    assert "answers - better than +" in better
    assert "about as well as" in level and "worse" not in level and "better" not in level


def test_depth_order_follows_table_10():
    holds = prose.depth_order(20.0, 3.0, "1-8", "16-22")
    reversed_ = prose.depth_order(-23.3, -20.1, "1-8", "16-22")
    assert "the paper's order" in holds and "part of the reason" in holds
    assert "does not show in Table 10" in reversed_ and "-20.1%" in reversed_
    assert "cannot show the order" in prose.depth_order(float("nan"), 3.0, "1-8", "16-22")


def test_dag_average_follows_table_6():
    above = prose.dag_average(Measure(9.4, 40, (7.0, 12.0)), 1.3)
    below = prose.dag_average(Measure(1.6, 48, (1.0, 2.2)), 15.8)
    inside = prose.dag_average(Measure(14.0, 48, (10.0, 18.0)), 15.8)
    assert "above the paper's 1.3%" in above and "does not make a large average" not in above
    assert "below the paper's 15.8%" in below and "does not make a large average" in below
    assert "includes the paper's 15.8%" in inside


def test_embedding_notes_follow_the_model():
    tied = prose.embedding_notes("M", tied=True, bos=True)
    untied = prose.embedding_notes("M", tied=False, bos=False)
    assert "ties its input and output" in tied and "sink" not in tied
    assert "separate input and output" in untied and "attention sink" in untied


def test_logic_chain_has_no_empty_stage():
    import pandas as pd
    from types import SimpleNamespace
    case = SimpleNamespace(prompt="3 + 5 =", answer="8")
    found = pd.DataFrame({"operand": ["3", "5"], "attn_layer": [4, 2]}, index=["1_7", "0_9"])
    full = dict(prose.chain_stages(case, [1, 3], found, "16_8", 40.0, "23_418", ["23_418: 8"], 0.9))
    none = dict(prose.chain_stages(case, [1, 3], found.head(0), "16_8", -5.0, "23_418", ["23_418: 8"], 0.9))
    assert "1_7 (3)" in full["feature enhancing"] and "2, 4" in full["feature transferring"]
    assert "raises" in full["feature predicting"] and "-40%" in full["feature predicting"]
    assert "none on a path" in none["feature enhancing"] and "no attention layer" in none["feature transferring"]
    assert "lowers" in none["feature predicting"] and "+5%" in none["feature predicting"]
    assert all(text.split(":")[-1].strip() for text in full.values()) and all(none.values())


def test_the_lora_page_says_when_training_had_not_converged():
    from cna_utils.measure.lora import loss_still_falling
    falling, fall = loss_still_falling([3.0 - 0.05 * i for i in range(40)])
    assert falling and 0.1 < fall < 0.5
    flat, f0 = loss_still_falling([1.0 + 0.001 * (-1) ** i for i in range(40)])
    assert not flat and abs(f0) < 0.01
    assert loss_still_falling([2.0, 1.0])[0] and loss_still_falling([1.0])[0] is False
    text = prose.convergence({0: fall, 8: f0})
    assert "had not converged in 1 of 2 runs" in text and "layer 0" in text and "layer 8" not in text
    assert "levelled off" in prose.convergence({0: f0, 8: f0})
