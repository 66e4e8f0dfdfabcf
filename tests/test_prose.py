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
