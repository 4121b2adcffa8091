"""The rollout: episodes for each prompt, scored and rewarded, into advantages and a token batch."""
