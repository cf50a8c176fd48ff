"""Phase `concepts`: domain specs, LLM back ends with their cache and answer parsing, concept discovery,
merging of near-duplicate concepts, and prompt diversification. Entry point: `pas.concepts.build`."""
