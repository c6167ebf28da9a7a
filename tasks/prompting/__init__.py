"""What the LLM reads: prompt templates, output formats, token counts, and the plan."""
