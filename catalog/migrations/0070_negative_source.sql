-- Which pool each mined negative came from (issue 12): 'positives' (a kept positive of the same task) or
-- 'products' (a product text of the same language and market, `compass mine --pool products`). Rows mined
-- before this column existed came from the positives pool.
ALTER TABLE negatives ADD COLUMN source VARCHAR DEFAULT 'positives';
