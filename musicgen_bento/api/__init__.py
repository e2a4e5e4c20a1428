"""The HTTP surface: error responses (`errors`), middleware, the GET/DELETE routes, admission of
/continue calls to the generator, the OpenAPI document and the typed client."""
