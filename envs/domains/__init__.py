"""Task domains: SWE-Func-Loc, BrowseComp-Plus and the embedded standard-library domain."""
