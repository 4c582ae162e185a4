

def test_parser_choices_match_the_library():
    from quantrewrite.cli.sensitivity import GRANULARITY_CHOICES, METRIC_CHOICES
    from quantrewrite.output_metrics import METRICS
    from quantrewrite.sensitivity import GRANULARITIES

    assert METRIC_CHOICES == tuple(sorted(METRICS)) and GRANULARITY_CHOICES == GRANULARITIES
