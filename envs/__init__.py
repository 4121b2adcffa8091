"""UserVille: preferences, user simulators, effort grading, vaguenization, scoring, task domains."""
