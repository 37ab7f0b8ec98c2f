"""A small cardholder schema with Luhn-valid test PANs, for the demo and the tests."""

# Card-brand test numbers (Visa, Mastercard, Amex, Discover, Visa debit): Luhn-valid,
# never issued, so the masking safety net sees real-looking PANs.
PAYMENTS_SCHEMA = """
CREATE TABLE cards (
    id serial PRIMARY KEY,
    holder text,
    pan text,
    cvv text,
    expiry text
);
CREATE TABLE transactions (
    id serial,
    card_id int REFERENCES cards,
    amount numeric(10, 2),
    created_at timestamptz DEFAULT now()
);
INSERT INTO cards (holder, pan, cvv, expiry) VALUES
    ('Alice Martin', '4111111111111111', '123', '12/29'),
    ('Bob Chen', '5555555555554444', '456', '01/28'),
    ('Carol Diaz', '378282246310005', '7890', '06/27'),
    ('Dan Okafor', '6011111111111117', '321', '09/30'),
    ('Eve Novak', '4000056655665556', '654', '03/29');
INSERT INTO transactions (card_id, amount) VALUES
    (1, 12.50), (1, 99.99), (2, 4.20), (3, 1500.00), (4, 23.75), (5, 0.99), (5, 310.00);
"""
