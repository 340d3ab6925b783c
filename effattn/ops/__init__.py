"""Pure attention ops (no parameters): one folder per mechanism, each with naive / recurrent / chunk impls."""
