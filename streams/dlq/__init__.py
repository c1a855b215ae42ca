"""Dead letters: parse, summarise, select, show; bounded ledgered replays. Imports: kafka, pipeline, policy, errors."""
