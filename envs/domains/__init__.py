"""Task domains: SWE-Func-Loc, BrowseComp-Plus and the embedded standard-library domain.

  base          Task, the TaskDomain protocol, observation truncation, the function-loc F1
  registry      name -> (config section, builder); each domain module registers itself
  repo_tools    read-only, confined repository tools (view/list/find/grep, OpenHands compat)
  repo_bash     `execute_bash`: whitelisted read-only commands run in Python, no shell
  func_loc      the function-localization domain over per-task trees
  stdlib_loc    embedded offline tasks over the running interpreter's standard library
  gold_functions  gold edited functions of a patch, with `ast` at the base commit
  swe_func_loc  SWE-bench Verified / SWE-Gym rows, repository snapshots, tasks
  retrievers    corpora, BM25 and dense retrievers, embedders
  browsecomp    BrowseComp-Plus tasks, search/open_page tools, answer matching and judge
"""
